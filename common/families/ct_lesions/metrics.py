"""Dice and IoU per class, each with its reduction named (numpy; masks as class indices).

For class c, image i: TP, FP, FN counted over pixels; Dice = 2TP / (2TP + FP + FN),
IoU = TP / (TP + FP + FN).

- ``per_image``: the mean over images of each image's score. An image where class c is absent
  from both prediction and truth (0 / 0) is counted by ``empty``: "one" scores it 1 (a correct
  "nothing here"), "skip" leaves it out of that class's mean (NaN if every image is empty).
- ``pooled``: TP, FP and FN summed over the whole set first, then one ratio (empty-vs-empty
  pixels add nothing; a class absent everywhere is NaN).
- ``per_slice`` (when slice ids are given): each slice's Dice per class (rounded, None where the
  rule leaves it out) and its lesion Dice (the mean over the lesion classes), for the report's
  distributions and the paired test between jobs.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

EMPTY_RULES = ("one", "skip")


def confusion_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C, 3) TP, FP, FN per image and class, for index masks (N, H, W)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must both be (N, H, W) index masks")
    counts = np.zeros((pred.shape[0], n_classes, 3), dtype=np.int64)
    for c in range(n_classes):
        p, t = pred == c, truth == c
        counts[:, c, 0] = (p & t).sum(axis=(1, 2))
        counts[:, c, 1] = (p & ~t).sum(axis=(1, 2))
        counts[:, c, 2] = (~p & t).sum(axis=(1, 2))
    return counts


def _ratios(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp, fp, fn = (counts[..., k].astype(np.float64) for k in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def image_dice_iou(counts: np.ndarray, empty: str = "one") -> tuple[np.ndarray, np.ndarray]:
    """(N, C) Dice and IoU of each image and class from its counts, under the empty rule (NaN
    where "skip" leaves an empty-vs-empty image out)."""
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    dice, iou = _ratios(counts)  # (N, C), NaN where empty-vs-empty
    if empty == "one":
        is_empty = counts.sum(axis=-1) == 0
        dice, iou = np.where(is_empty, 1.0, dice), np.where(is_empty, 1.0, iou)
    return dice, iou


def dice_iou(pred: np.ndarray, truth: np.ndarray, n_classes: int, empty: str = "one",
             counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per class (C,): ``dice_per_image``, ``iou_per_image``, ``dice_pooled``, ``iou_pooled``, and
    ``empty_images`` (how many images had the class in neither mask). ``counts``: those of
    ``confusion_counts`` when already made."""
    counts = confusion_counts(pred, truth, n_classes) if counts is None else counts
    dice, iou = image_dice_iou(counts, empty)
    is_empty = counts.sum(axis=-1) == 0
    with np.errstate(invalid="ignore"):
        pooled_dice, pooled_iou = _ratios(counts.sum(axis=0))
        per_image_dice = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in dice.T])
        per_image_iou = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in iou.T])
    return {"dice_per_image": per_image_dice, "iou_per_image": per_image_iou, "dice_pooled": pooled_dice,
            "iou_pooled": pooled_iou, "empty_images": is_empty.sum(axis=0)}


SLICE_DIGITS = 4  # per-slice Dice kept to 0.0001


def per_slice_dice(counts: np.ndarray, ids: Sequence[int], class_names: Sequence[str], lesions: Sequence[int],
                   empty: str) -> dict:
    """``ids``; ``dice``: class -> each slice's Dice (None where left out); ``lesion_dice``: each
    slice's mean Dice over the lesion classes (None when both are left out)."""
    dice, _ = image_dice_iou(counts, empty)
    as_list = lambda col: [None if not np.isfinite(v) else round(float(v), SLICE_DIGITS) for v in col]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a slice with every lesion class left out: NaN
        lesion = np.nanmean(dice[:, list(lesions)], axis=1)
    return {"ids": [int(i) for i in ids], "dice": {name: as_list(dice[:, c]) for c, name in enumerate(class_names)},
            "lesion_dice": as_list(lesion)}


def seg_report(pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str], lesions: Sequence[int],
               empty: str = "one", ids: Sequence[int] | None = None) -> dict:
    """The results of a segmentation job: per class, the lesion mean, and the conventions used;
    with ``ids`` (one per slice), each slice's Dice (``per_slice``)."""
    counts = confusion_counts(pred, truth, len(class_names))
    scores = dice_iou(pred, truth, len(class_names), empty, counts)
    as_float = lambda v: None if not np.isfinite(v) else float(v)  # noqa: E731
    per_class = {name: {key: (as_float(scores[key][c]) if key != "empty_images" else int(scores[key][c]))
                        for key in scores} for c, name in enumerate(class_names)}
    lesion = {key: as_float(np.nanmean([scores[key][c] for c in lesions]))
              for key in ("dice_per_image", "iou_per_image", "dice_pooled", "iou_pooled")}
    report = {"per_class": per_class, "lesion_mean": lesion, "n_images": int(np.asarray(pred).shape[0]),
              "empty_rule": empty,
              "reductions": {"per_image": f"mean over images; a class absent from both masks counts {empty!r}",
                             "pooled": "TP, FP, FN summed over the set, then one ratio"}}
    if ids is not None:
        report["per_slice"] = per_slice_dice(counts, ids, class_names, lesions, empty)
    return report
