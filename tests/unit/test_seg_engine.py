"""The segmentation engine: augmentation alignment, agreement with torchmetrics, a training smoke
test on a tiny encoder with checkpoint, resume and cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medq.common.families.ct_lesions.augment import seg_transform
from medq.common.families.ct_lesions.data import read_medseg, split_slices
from medq.common.families.ct_lesions.metrics import dice_iou
from medq.common.families.ct_lesions.synth import synth_ct
from medq.common.families.ct_lesions.spec import SEG_ENCODERS, SegmentSpec
from medq.common.specs import SplitSpec
from tests.unit.old_layouts import to_old_segmenter

TINY = dict(arch="unet", encoder="resnet18", image_size=64, batch_size=4)


def test_every_listed_encoder_and_architecture_is_known_to_smp():
    import segmentation_models_pytorch as smp

    from medq.common.families.ct_lesions.spec import SEG_ARCHS

    assert set(SEG_ENCODERS) <= set(smp.encoders.get_encoder_names())
    for arch in SEG_ARCHS:
        assert smp.create_model(arch, "resnet18", encoder_weights=None, in_channels=1, classes=4) is not None


def test_unknown_names_are_refused_with_the_valid_ones():
    from medq.common.errors import SpecError

    with pytest.raises(SpecError, match=r"unknown architecture 'unet\+\+\+'.*unetplusplus"):
        SegmentSpec(arch="unet+++")
    with pytest.raises(SpecError, match="unknown encoder 'effnet'.*efficientnet-b3.*tu-<name>"):
        SegmentSpec(encoder="effnet")
    assert SegmentSpec.from_dict(SegmentSpec(class_weights=(1, 2, 3, 4)).to_dict()).class_weights == (1, 2, 3, 4)


def test_augmentation_moves_image_and_mask_together():
    """The image is drawn from its own mask (class value / 3), so after any flip, quarter turn
    and affine the image, rounded back to classes, must still equal the mask away from edges."""
    spec = SegmentSpec(image_size=64, brightness=0.0, contrast=0.0, flip_p=0.5, rotate90_p=0.5)
    rng = np.random.default_rng(0)
    mask = np.full((96, 96), 3, dtype=np.uint8)
    mask[10:40, 15:35], mask[50:80, 55:70], mask[60:70, 10:30] = 0, 1, 2
    image = mask.astype(np.float32) / 3.0  # on [0, 1], as the pipeline gets it
    transform = seg_transform(spec, train=True, air=1.0)
    moved = 0
    for seed in range(20):
        transform.set_random_seed(int(rng.integers(1 << 30)))
        out = transform(image=image, mask=mask)
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {0, 1, 2, 3}
        from_image = np.clip(np.round(out["image"] * 3.0), 0, 3).astype(np.uint8)
        m = out["mask"].astype(int)
        interior = np.ones_like(m, dtype=bool)  # pixels whose 3x3 neighbourhood is one class
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= np.roll(np.roll(m, dy, 0), dx, 1) == m
        agree = (from_image == out["mask"])[interior].mean()
        assert agree > 0.995, f"seed {seed}: image and mask agree on {agree:.3f} of the interior pixels"
        plain = seg_transform(spec, train=False)(image=image, mask=mask)["mask"]
        moved += not np.array_equal(out["mask"], plain)
    assert moved >= 10  # the pipeline did move things (flips and turns can also cancel out)


def test_dice_and_iou_agree_with_torchmetrics_on_random_masks():
    """Agreement recorded: pooled Dice = torchmetrics DiceScore(aggregation_level="global"),
    per-image Dice with empty="skip" = DiceScore(aggregation_level="samplewise"), per-image IoU
    with empty="skip" = MeanIoU(per_class=True); all to 1e-6 on these masks (torchmetrics leaves a
    sample where a class is absent from both masks out of that class's mean, as "skip" does)."""
    from torchmetrics.segmentation import DiceScore, MeanIoU

    rng = np.random.default_rng(7)
    pred, truth = rng.integers(0, 4, (6, 24, 24)), rng.integers(0, 4, (6, 24, 24))
    for k in (0, 3):  # class 1 absent from both masks of two images
        pred[k][pred[k] == 1], truth[k][truth[k] == 1] = 0, 2
    ours = dice_iou(pred, truth, 4, empty="skip")
    p, t = torch.from_numpy(pred), torch.from_numpy(truth)
    for level, key in (("global", "dice_pooled"), ("samplewise", "dice_per_image")):
        metric = DiceScore(4, average="none", aggregation_level=level, input_format="index")
        metric.update(p, t)
        np.testing.assert_allclose(ours[key], metric.compute().numpy(), atol=1e-6)
    iou = MeanIoU(4, per_class=True, input_format="index")
    iou.update(p, t)
    np.testing.assert_allclose(ours["iou_per_image"], iou.compute().numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    synth_ct(root / "ct", n=24, seed=2, size=64, slices_per_volume=4)
    data = read_medseg(root / "ct")
    return data, split_slices(data, SplitSpec())[0]


def test_training_writes_checkpoints_with_the_hu_statistics_and_resumes(ct, tmp_path):
    from medq.common.training.checkpoint import load_checkpoint
    from medq.common.training.kit import TrainHooks
    from medq.common.families.ct_lesions.train import evaluate_segmenter, train_segmenter

    data, split = ct
    spec = SegmentSpec(epochs=2, **TINY)
    first = train_segmenter(spec, data.sources, split, tmp_path, seed=0)
    assert (first.epochs_run, first.cancelled, first.resumed_from_epoch) == (2, False, None)
    best = load_checkpoint(first.best_checkpoint)
    train_hu = np.concatenate([np.load(data.sources[0].images)[i].ravel() for i in split["train"]])
    assert best["hu"]["mean"] == pytest.approx(np.clip(train_hu, -1500, 500).mean(), rel=1e-4)
    assert len(best["class_weights"]) == 4 and best["class_weights"][0] > best["class_weights"][3]
    assert 0 <= best["val_lesion_dice"] <= 1 and best["epoch"] == first.best_epoch
    assert best["val_loss"] == first.best_val_loss and first.best_val_loss > 0
    report = evaluate_segmenter(first.best_checkpoint, data.sources, split["test"], tmp_path / "overlays", 2)
    assert report["n_images"] == len(split["test"]) and set(report["per_class"]) == {
        "ground_glass", "consolidation", "other_lung", "background"}
    assert len(list((tmp_path / "overlays").glob("slice-*.png"))) == 2

    longer = SegmentSpec(epochs=2, **TINY)  # the same spec: a second call finds every epoch done
    again = train_segmenter(longer, data.sources, split, tmp_path, seed=0)
    assert (again.resumed_from_epoch, again.epochs_run) == (2, 2)


def test_a_cancel_stops_within_the_epoch_and_the_next_call_resumes(ct, tmp_path):
    from medq.common.training.kit import TrainHooks
    from medq.common.families.ct_lesions.train import train_segmenter

    data, split = ct
    spec = SegmentSpec(epochs=3, **TINY)
    steps = []
    stop_in_second_epoch = TrainHooks(progress=lambda p: steps.append(p.epoch),
                                      should_stop=lambda: steps.count(2) >= 1)
    cut = train_segmenter(spec, data.sources, split, tmp_path, seed=1, hooks=stop_in_second_epoch)
    assert cut.cancelled and cut.epochs_run == 1
    rest = train_segmenter(spec, data.sources, split, tmp_path, seed=1)
    assert (rest.resumed_from_epoch, rest.epochs_run, rest.cancelled) == (1, 3, False)


def test_a_last_pt_of_the_layout_before_the_kit_resumes_exactly(ct, tmp_path):
    """A member stopped in epoch 2 by the code before the training kit (its last.pt: the epoch in
    state["epoch"], the normaliser beside the run) finishes as an uninterrupted run does."""
    from medq.common.training.kit import TrainHooks
    from medq.common.families.ct_lesions.train import train_segmenter

    data, split = ct
    spec = SegmentSpec(epochs=2, **TINY)
    straight = train_segmenter(spec, data.sources, split, tmp_path / "straight", seed=3)
    steps = []
    cut = train_segmenter(spec, data.sources, split, tmp_path / "cut", seed=3, hooks=TrainHooks(
        progress=lambda p: steps.append(p.epoch), should_stop=lambda: steps.count(2) >= 1))
    assert cut.cancelled and cut.epochs_run == 1
    to_old_segmenter(tmp_path / "cut" / "last.pt")
    rest = train_segmenter(spec, data.sources, split, tmp_path / "cut", seed=3)
    assert (rest.resumed_from_epoch, rest.epochs_run, rest.cancelled) == (1, 2, False)
    a = torch.load(straight.last_checkpoint, weights_only=True)["model"]
    b = torch.load(rest.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rest.best_val_dice == straight.best_val_dice


def test_a_checkpoint_of_another_spec_is_not_resumed(ct, tmp_path):
    from medq.common.errors import JobError
    from medq.common.families.ct_lesions.train import train_segmenter

    data, split = ct
    train_segmenter(SegmentSpec(epochs=1, **TINY), data.sources, split, tmp_path)
    with pytest.raises(JobError, match=r"different spec \(differs in: lr\)"):
        train_segmenter(SegmentSpec(epochs=1, lr=2e-4, **TINY), data.sources, split, tmp_path)


def test_inverse_frequency_class_weights():
    from medq.common.families.ct_lesions.train import inverse_frequency_weights

    assert inverse_frequency_weights(np.array([25, 25, 25, 25])) == (1.0, 1.0, 1.0, 1.0)
    assert inverse_frequency_weights(np.array([0, 10, 100, 890])) == pytest.approx((10.0, 10.0, 2.5, 0.2808988))


def test_loader_workers_draw_their_own_augmentations_and_repeat_them_under_one_seed(ct):
    """Each DataLoader worker copies the dataset; without its own seed every worker would replay
    the same flips and affines. Under one torch seed the whole epoch repeats exactly."""
    from torch.utils.data import DataLoader

    from medq.common.families.ct_lesions.hu import HUNormaliser
    from medq.common.families.ct_lesions.train import SliceSet
    from medq.common.training.kit import seed_worker_transform

    data, _ = ct
    dataset = SliceSet(data.sources, [5] * 4, HUNormaliser(-500.0, 450.0), SegmentSpec(**TINY), train=True)

    def epoch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker_transform)
        return [image for image, _ in loader]

    first = epoch(3)
    assert not torch.equal(first[0], first[1])  # workers 0 and 1, the same slice
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(3)))
