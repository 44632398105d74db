"""The segmentation loss of DESIGN.md: w_ce * CE(class-weighted) + w_dice * Dice + w_focal * Focal(gamma).

Inputs: logits (B, C, H, W) and class-index targets (B, H, W).

- CE: ``F.cross_entropy`` with per-class weights (None: unweighted), mean over pixels as PyTorch
  defines it for weights (divided by the summed weights of the targets).
- Dice: 1 - mean over classes of (2 sum(p t) + eps) / (sum p + sum t + eps), softmax p, one-hot
  t, sums over the batch and pixels (a class absent from the batch scores 1 against an empty
  prediction, about 0 against a confident wrong one).
- Focal: mean over pixels of -(1 - p_t)^gamma log p_t (gamma 0 is plain cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1.0


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    probs = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * one_hot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


@dataclass(frozen=True)
class SegLoss:
    w_ce: float = 0.25
    w_dice: float = 0.5
    w_focal: float = 0.25
    gamma: float = 2.5
    class_weights: Sequence[float] | None = None

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, dtype=torch.float32,
                                                                     device=logits.device)
        ce = F.cross_entropy(logits.float(), target, weight=weight)
        return self.w_ce * ce + self.w_dice * dice_loss(logits, target) + self.w_focal * focal_loss(
            logits, target, self.gamma)
