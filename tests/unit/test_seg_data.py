"""The MedSeg reader refuses bad data before anything is queued, naming the file and the slice."""

from __future__ import annotations

import numpy as np
import pytest

from medq.common.errors import DataError
from medq.common.families.ct_lesions.data import read_medseg, slice_arrays, split_slices
from medq.common.families.ct_lesions.synth import synth_ct
from medq.common.specs import SplitSpec


@pytest.fixture
def ct(tmp_path):
    synth_ct(tmp_path / "ct", n=30, seed=3, size=64, slices_per_volume=5)
    return tmp_path / "ct"


def _problems(root) -> str:
    with pytest.raises(DataError) as caught:
        read_medseg(root)
    return str(caught.value)


def test_a_good_set_is_read_with_its_volumes(ct):
    data = read_medseg(ct)
    assert data.n_slices == 30 and len(data.sources) == 1
    source = data.sources[0]
    assert (source.height, source.width, source.one_hot) == (64, 64, True)
    assert data.volume_ids[:6] == ("synth:0",) * 5 + ("synth:1",)


def test_class_index_masks_are_accepted_and_read_as_the_same_labels(ct, tmp_path):
    other = tmp_path / "index"
    other.mkdir()
    np.save(other / "images_a.npy", np.load(ct / "images_synth.npy")[..., 0])  # (N, H, W) too
    np.save(other / "masks_a.npy", np.load(ct / "masks_synth.npy").argmax(-1).astype(np.int64))
    one_hot, index = read_medseg(ct), read_medseg(other)
    assert index.sources[0].one_hot is False and index.volume_ids is None
    for (hu_a, mask_a), (hu_b, mask_b) in zip(slice_arrays(one_hot.sources, range(30)),
                                              slice_arrays(index.sources, range(30))):
        assert np.array_equal(mask_a, mask_b) and np.array_equal(hu_a, hu_b)


def test_lengths_that_differ_are_refused(ct):
    np.save(ct / "masks_synth.npy", np.load(ct / "masks_synth.npy")[:29])
    assert "masks_synth.npy: 29 masks for 30 images in images_synth.npy" in _problems(ct)


def test_sizes_that_differ_are_refused(ct):
    np.save(ct / "masks_synth.npy", np.load(ct / "masks_synth.npy")[:, :32])
    assert "masks_synth.npy: masks are 32x64 but the images in images_synth.npy are 64x64" in _problems(ct)


def test_nan_in_an_image_names_the_slice(ct):
    images = np.load(ct / "images_synth.npy")
    images[7, 3, 4, 0] = np.nan
    images[21, 0, 0, 0] = np.inf
    np.save(ct / "images_synth.npy", images)
    assert "images_synth.npy: NaN or infinite values in slice(s) 7, 21" in _problems(ct)


def test_mask_values_outside_the_classes_name_the_slice(ct, tmp_path):
    masks = np.load(ct / "masks_synth.npy")
    masks[4, 10, 10, 0] = 2
    np.save(ct / "masks_synth.npy", masks)
    assert "masks_synth.npy: values other than 0 and 1 in slice(s) 4" in _problems(ct)
    index = np.load(ct / "masks_synth.npy").argmax(-1)
    index[12, 0, 0] = 7
    np.save(ct / "masks_synth.npy", index)
    assert "masks_synth.npy: values outside the classes 0..3 in slice(s) 12" in _problems(ct)


def test_one_hot_channels_that_do_not_sum_to_one_name_the_slice(ct):
    masks = np.load(ct / "masks_synth.npy")
    masks[9, 5, 5] = (1, 0, 1, 0)  # two classes at one pixel
    masks[11, 6, 6] = 0  # no class at all
    np.save(ct / "masks_synth.npy", masks)
    assert "one-hot channels do not sum to 1 at every pixel in slice(s) 9, 11" in _problems(ct)


def test_every_problem_is_listed_at_once(ct):
    images = np.load(ct / "images_synth.npy")
    images[0, 0, 0, 0] = np.nan
    np.save(ct / "images_synth.npy", images)
    (ct / "masks_orphan.npy").write_bytes((ct / "volumes_synth.npy").read_bytes())
    (ct / "images_lonely.npy").write_bytes((ct / "volumes_synth.npy").read_bytes())
    text = _problems(ct)
    assert "3 problem(s)" in text
    assert "images_lonely.npy: no matching masks_lonely.npy" in text
    assert "masks_orphan.npy: no matching images_orphan.npy" in text


def test_split_by_volume_keeps_each_scan_on_one_side(ct):
    data = read_medseg(ct)
    split, by = split_slices(data, SplitSpec(seed=1))
    assert by == "volume"
    sides = {part: {data.volume_ids[i] for i in indices} for part, indices in split.items()}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"]) and not (
        sides["val"] & sides["test"])
    assert sorted(i for part in split.values() for i in part) == list(range(30))


def test_without_volume_ids_the_split_is_by_slice(ct):
    (ct / "volumes_synth.npy").unlink()
    split, by = split_slices(read_medseg(ct), SplitSpec(seed=1))
    assert by == "slice" and (len(split["train"]), len(split["val"]), len(split["test"])) == (22, 4, 4)
