"""The cephalometric family's maths: the heatmap codec and the mm metrics, by hand."""

import numpy as np
import pytest

from medq.common.families.ceph.codec import HeatmapCodec
from medq.common.families.ceph.metrics import ceph_metrics, radial_errors_mm
from medq.common.errors import SpecError


@pytest.mark.parametrize("refine", ["dark", "quadratic"])
def test_encode_then_decode_returns_sub_pixel_positions_within_a_tenth_of_a_heatmap_pixel(refine):
    codec = HeatmapCodec(input_size=128, stride=4, sigma_input=3.5, refine=refine)
    rng = np.random.default_rng(0)
    points = rng.uniform(12, 116, size=(19, 2))  # input px, off the pixel grid
    maps, weights = codec.encode(points)
    assert maps.shape == (19, 32, 32) and weights.tolist() == [1.0] * 19
    decoded, peaks = codec.decode(maps[None])
    error_heatmap_px = np.abs(decoded[0] - points) / codec.stride
    assert error_heatmap_px.max() < 0.1
    assert np.all(peaks > 0.5)


def test_without_refinement_the_decode_is_off_by_up_to_half_a_heatmap_pixel():
    """The yardstick the refinements are measured against: the argmax alone."""
    codec = HeatmapCodec(input_size=128, refine="none")
    points = np.array([[50.3, 61.9], [70.0, 20.2]])
    decoded, _ = codec.decode(codec.encode(points)[0][None])
    assert np.abs(decoded[0] - points).max() / codec.stride > 0.1
    assert np.abs(decoded[0] - points).max() / codec.stride <= 0.5 + 1e-9


def test_the_pixel_centre_convention_maps_a_heatmap_centre_to_its_input_block_centre():
    codec = HeatmapCodec(input_size=64, stride=4)
    # heatmap pixel 0 covers input pixels 0..3, whose centre is 1.5
    assert codec.to_input(np.array([0.0])) == pytest.approx([1.5])
    assert codec.to_heatmap(codec.to_input(np.array([7.25]))) == pytest.approx([7.25])


def test_sigma_is_given_at_input_scale_and_used_in_heatmap_pixels():
    codec = HeatmapCodec(input_size=64, stride=4, sigma_input=8.0)
    maps, _ = codec.encode(np.array([[30.0, 30.0]]))  # u = v = (30.5 / 4) - 0.5 = 7.125
    row = maps[0, 7]
    # one heatmap pixel away from u the Gaussian of sigma 2 falls by exp(-(d^2)/8)
    assert row[8] / row[7] == pytest.approx(np.exp(-(0.875**2 - 0.125**2) / 8), rel=1e-5)


def test_a_landmark_outside_the_input_gets_an_empty_map_and_weight_zero():
    codec = HeatmapCodec(input_size=64)
    maps, weights = codec.encode(np.array([[10.0, 10.0], [-20.0, 30.0]]))
    assert weights.tolist() == [1.0, 0.0] and maps[1].max() == 0.0 and maps[0].max() > 0.9


def test_an_unknown_refinement_lists_the_valid_ones():
    with pytest.raises(SpecError, match="dark.*none.*quadratic"):
        HeatmapCodec(input_size=64, refine="parabolic")


def test_radial_errors_use_each_images_own_spacing():
    pred = np.array([[[3.0, 4.0]], [[0.0, 10.0]]])
    truth = np.zeros((2, 1, 2))
    # 5 px at 0.1 mm/px = 0.5 mm; 10 px at 0.25 mm/px = 2.5 mm
    np.testing.assert_allclose(radial_errors_mm(pred, truth, [0.1, 0.25]), [[0.5], [2.5]])


def test_mre_sd_and_sdr_by_hand():
    """Radial errors 1, 2, 3, 5 mm (spacing 1 mm/px): MRE 2.75, SD sqrt(((1.75)^2 + 0.75^2 +
    0.25^2 + 2.25^2) / 4) = sqrt(8.75 / 4) = 1.479; SDR@2 = 2/4, @2.5 = 2/4, @3 = 3/4, @4 = 3/4."""
    truth = np.zeros((2, 2, 2))
    pred = np.array([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [3.0, 4.0]]])
    m = ceph_metrics(pred, truth, [1.0, 1.0], names=["Sella", "Nasion"])
    assert m["mre_mm"] == pytest.approx(2.75)
    assert m["sd_mm"] == pytest.approx(np.sqrt(8.75 / 4))
    assert (m["sdr_2mm"], m["sdr_2.5mm"], m["sdr_3mm"], m["sdr_4mm"]) == (0.5, 0.5, 0.75, 0.75)
    sella, nasion = m["per_landmark"]
    assert (sella["landmark"], sella["mre_mm"], sella["sdr_2mm"]) == ("Sella", 2.0, 0.5)
    assert (nasion["landmark"], nasion["mre_mm"], nasion["sdr_4mm"]) == ("Nasion", 3.5, 0.5)


def test_a_missing_or_bad_spacing_is_refused():
    with pytest.raises(ValueError, match="one spacing per image"):
        radial_errors_mm(np.zeros((2, 1, 2)), np.zeros((2, 1, 2)), [0.1])
    with pytest.raises(ValueError, match="positive"):
        radial_errors_mm(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), [0.0])


def test_without_a_spacing_the_errors_stay_in_pixels_and_no_sdr_is_claimed():
    m = ceph_metrics(np.array([[[3.0, 4.0]]]), np.zeros((1, 1, 2)), None)
    assert m["unit"] == "px" and m["mre_px"] == 5.0 and not any(k.startswith("sdr") for k in m)
