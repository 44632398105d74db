"""CUDA-only: a segmenter trains with mixed precision and segments a volume on the GPU, and its
float16 masks agree with float32 ones on the CPU. Skipped without a GPU."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_segmenter_trains_with_amp_and_its_gpu_masks_agree_with_the_cpu(tmp_path):
    from medq.common.training.checkpoint import load_checkpoint
    from medq.common.families.ct_lesions.data import read_medseg, split_slices
    from medq.common.families.ct_lesions.predict import SegPredictor
    from medq.common.families.ct_lesions.synth import synth_ct
    from medq.common.families.ct_lesions.train import train_segmenter
    from medq.common.families.ct_lesions.spec import SegmentSpec

    synth_ct(tmp_path / "ct", n=24, seed=1, size=64, slices_per_volume=4)
    data = read_medseg(tmp_path / "ct")
    split, _ = split_slices(data, SegmentSpec().split)
    spec = SegmentSpec(arch="unet", encoder="resnet18", image_size=64, epochs=2, batch_size=4, amp=True)
    outcome = train_segmenter(spec, data.sources, split, tmp_path / "work")
    assert outcome.device == "cuda:0" and math.isfinite(outcome.best_val_dice)
    assert load_checkpoint(outcome.last_checkpoint)["scaler"]["scale"] > 0

    volume = np.load(tmp_path / "ct" / "images_synth.npy")[:6, ..., 0]
    masks = {}
    for device in ("cuda", "cpu"):
        predictor = SegPredictor(outcome.best_checkpoint, device)
        masks[device] = predictor.segment(predictor.model_input(volume), volume.shape[1:], batch_size=4)
    assert (masks["cuda"] == masks["cpu"]).mean() > 0.99
