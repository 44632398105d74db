"""The synthetic CT generator: the MedSeg layout, realistic HU per class, lesion-free slices."""

import numpy as np

from medq.common.families.ct_lesions.schema import BACKGROUND, CONSOLIDATION, GROUND_GLASS, OTHER_LUNG
from medq.common.families.ct_lesions.synth import synth_ct


def test_the_medseg_layout_with_one_hot_masks_and_volume_ids(tmp_path):
    summary = synth_ct(tmp_path, n=30, seed=1, size=64, slices_per_volume=10)
    images = np.load(tmp_path / "images_synth.npy")
    masks = np.load(tmp_path / "masks_synth.npy")
    volumes = np.load(tmp_path / "volumes_synth.npy")
    assert images.shape == (30, 64, 64, 1) and images.dtype == np.float32
    assert masks.shape == (30, 64, 64, 4) and set(np.unique(masks)) == {0, 1}
    assert (masks.sum(axis=-1) == 1).all()  # one-hot: every pixel exactly one class
    assert volumes.tolist() == [v for v in range(3) for _ in range(10)] and summary.n_volumes == 3
    assert 0 < summary.slices_with_lesions < 30  # some slices have no lesion


def test_each_class_has_its_hu_range_so_the_pixels_carry_the_labels(tmp_path):
    synth_ct(tmp_path, n=40, seed=2, size=64)
    hu = np.load(tmp_path / "images_synth.npy")[..., 0]
    labels = np.load(tmp_path / "masks_synth.npy").argmax(axis=-1)
    median = {c: float(np.median(hu[labels == c])) for c in (GROUND_GLASS, CONSOLIDATION, OTHER_LUNG)}
    assert -900 < median[OTHER_LUNG] < -800
    assert -600 < median[GROUND_GLASS] < -300
    assert -100 < median[CONSOLIDATION] < 40
    assert (labels[hu < -950] == BACKGROUND).mean() > 0.999  # air is background (lung noise aside)


def test_same_seed_same_arrays(tmp_path):
    synth_ct(tmp_path / "a", n=5, seed=3, size=64)
    synth_ct(tmp_path / "b", n=5, seed=3, size=64)
    for name in ("images_synth.npy", "masks_synth.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
