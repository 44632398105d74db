"""The segmentation loss on inputs small enough to work out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from medq.common.families.ct_lesions.losses import SegLoss, dice_loss, focal_loss


def two_pixels():
    """Two pixels, two classes; logits give p(class 1) = 0.8 on pixel 0 (truth 1) and
    p(class 0) = 0.5 on pixel 1 (truth 0)."""
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(4.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    return logits, target


def test_focal_by_hand_and_gamma_zero_is_cross_entropy():
    logits, target = two_pixels()
    expected = (-(0.2 ** 2.5) * math.log(0.8) - (0.5 ** 2.5) * math.log(0.5)) / 2
    assert focal_loss(logits, target, 2.5).item() == pytest.approx(expected, rel=1e-5)
    assert focal_loss(logits, target, 0.0).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_dice_by_hand():
    """Class 0: p = (0.2, 0.5), t = (0, 1): (2*0.5 + 1) / (0.7 + 1 + 1) = 2 / 2.7.
    Class 1: p = (0.8, 0.5), t = (1, 0): (2*0.8 + 1) / (1.3 + 1 + 1) = 2.6 / 3.3."""
    logits, target = two_pixels()
    expected = 1 - (2 / 2.7 + 2.6 / 3.3) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_the_weighted_sum_and_the_class_weights():
    logits, target = two_pixels()
    loss = SegLoss(class_weights=[1.0, 3.0])(logits, target).item()
    # weighted CE: (3 * -log 0.8 + 1 * -log 0.5) / (3 + 1)
    ce = (3 * -math.log(0.8) - math.log(0.5)) / 4
    expected = 0.25 * ce + 0.5 * dice_loss(logits, target).item() + 0.25 * focal_loss(logits, target, 2.5).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert SegLoss(w_ce=1, w_dice=0, w_focal=0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6)


def test_a_confident_right_answer_costs_almost_nothing():
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 30
    assert SegLoss()(logits, target).item() < 1e-3
