"""Landmark errors, the evaluation report, and ensemble aggregation (numpy only, torch-free).

Errors are Euclidean distances in pixels of the ORIGINAL image, and also at the model's
scale (the source project's reporting unit, 224 px): each image's x error is scaled by
model_scale / width and its y error by model_scale / height before the distance is taken.
Sizes are always passed in; nothing is inferred from the number of landmarks.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from medq.common.errors import SpecError
from medq.common.families.chest.schema import MODEL_SCALE, QUALITY_EDGES_PX
from medq.common.registry import Registry


def radial_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Euclidean distance per landmark: (N, L, 2) x2 -> (N, L), in the inputs' units."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"expected two arrays of shape (N, L, 2), got {pred.shape} and {true.shape}")
    return np.linalg.norm(pred - true, axis=-1)


def rescaled_errors(pred_px: np.ndarray, true_px: np.ndarray, image_sizes: np.ndarray, scale: float) -> np.ndarray:
    """Errors (N, L) after resizing each image (w, h) to scale x scale: dx*scale/w, dy*scale/h."""
    sizes = np.asarray(image_sizes, dtype=float)
    factor = scale / sizes  # (N, 2): x and y factors
    diff = (np.asarray(pred_px, dtype=float) - np.asarray(true_px, dtype=float)) * factor[:, None, :]
    return np.linalg.norm(diff, axis=-1)


def _edge_label(edge: float) -> str:
    return f"{edge:g}"


def quality_labels(edges: Sequence[float] = QUALITY_EDGES_PX) -> list[str]:
    """Bucket names for the edges: "<5px", "5-8.5px", "8.5-15px", ">=15px (review)"."""
    inner = [f"{_edge_label(a)}-{_edge_label(b)}px" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<{_edge_label(edges[0])}px", *inner, f">={_edge_label(edges[-1])}px (review)"]


def quality_buckets(errors_px: np.ndarray, edges: Sequence[float] = QUALITY_EDGES_PX) -> dict[str, float]:
    """Fraction of landmark predictions per error bucket; an error equal to an edge goes up."""
    errors = np.asarray(errors_px, dtype=float).ravel()
    index = np.digitize(errors, np.asarray(edges, dtype=float), right=False)
    counts = np.bincount(index, minlength=len(edges) + 1)
    return {label: float(c / errors.size) for label, c in zip(quality_labels(edges), counts)}


def landmark_report(
    pred_px: np.ndarray,
    true_px: np.ndarray,
    image_sizes: np.ndarray,
    categories: Sequence[str],
    model_scale: int = MODEL_SCALE,
) -> dict:
    """Evaluation summary of landmark predictions, as JSON-ready plain numbers.

    pred_px, true_px: (N, L, 2) in pixels of the original images; image_sizes: (N, 2) as
    (width, height) of those originals; categories: N strings. Statistics pool all N*L
    landmark errors: median and p95 by numpy's linear interpolation, std with ddof=0.
    "_224" keys are at ``model_scale`` (224 px by default). normalised_error is the mean of
    px error / that image's width. quality: fraction of the N*L errors (original px) per
    bucket of schema.QUALITY_EDGES_PX, as a dict ("quality") and as a list of {bucket, fraction}
    ("quality_buckets").
    """
    errors = radial_errors(pred_px, true_px)
    n, n_landmarks = errors.shape
    sizes = np.asarray(image_sizes, dtype=float)
    if n == 0:
        raise ValueError("landmark_report needs at least one image")
    if sizes.shape != (n, 2) or np.any(sizes <= 0):
        raise ValueError(f"image_sizes must be (N, 2) positive (width, height), got shape {sizes.shape}")
    if len(categories) != n:
        raise ValueError(f"{len(categories)} categories for {n} images")
    scaled = rescaled_errors(pred_px, true_px, sizes, model_scale)
    cats = np.asarray(list(categories), dtype=object)

    per_landmark = [
        {
            "landmark": i,
            "mean_error_px": float(errors[:, i].mean()),
            "median_error_px": float(np.median(errors[:, i])),
            "std_error_px": float(errors[:, i].std()),
            "mean_error_px_224": float(scaled[:, i].mean()),
        }
        for i in range(n_landmarks)
    ]
    per_category = {
        str(c): {
            "n_images": int((cats == c).sum()),
            "mean_error_px": float(errors[cats == c].mean()),
            "mean_error_px_224": float(scaled[cats == c].mean()),
        }
        for c in sorted(set(cats))
    }
    return {
        "n_images": int(n),
        "mean_error_px": float(errors.mean()),
        "median_error_px": float(np.median(errors)),
        "p95_error_px": float(np.percentile(errors, 95)),
        "std_error_px": float(errors.std()),
        "mean_error_px_224": float(scaled.mean()),
        "median_error_px_224": float(np.median(scaled)),
        "normalised_error": float((errors / sizes[:, :1]).mean()),
        "per_landmark": per_landmark,
        "per_category": per_category,
        "quality": quality_buckets(errors),
        # the same buckets as a list: their names hold dots, which paths into results cannot
        "quality_buckets": [{"bucket": label, "fraction": fraction}
                            for label, fraction in quality_buckets(errors).items()],
    }


PER_IMAGE_DIGITS = 3  # px: a thousandth of a pixel, far below any annotation's precision


def per_image(pred_px: np.ndarray, true_px: np.ndarray, stems: Sequence[str], *, with_points: bool = False,
              digits: int = PER_IMAGE_DIGITS) -> dict:
    """Per test image, in the order of ``stems``: its mean radial error and its L errors in
    original px, and (``with_points``) the predicted points [[x, y] x L]; rounded to ``digits``
    so that 300 images x 15 landmarks stay a few tens of kB of JSON. The mean is taken before
    rounding. Feeds the report's CED, paired test and gallery."""
    errors = radial_errors(pred_px, true_px)
    if len(stems) != errors.shape[0]:
        raise ValueError(f"{len(stems)} stems for {errors.shape[0]} images")
    out = {"stems": [str(s) for s in stems],
           "mean_error_px": np.round(errors.mean(axis=1), digits).tolist(),
           "errors_px": np.round(errors, digits).tolist()}
    if with_points:
        out["pred_px"] = np.round(np.asarray(pred_px, dtype=float), digits).tolist()
    return out


# --- ensemble aggregation ------------------------------------------------------------------

Aggregator = Callable[[np.ndarray, Optional[Sequence[float]]], np.ndarray]
AGGREGATORS: Registry[Aggregator] = Registry("aggregation")


@AGGREGATORS.register("mean")
def _mean(preds: np.ndarray, val_losses: Sequence[float] | None) -> np.ndarray:
    return preds.mean(axis=0)


@AGGREGATORS.register("median")
def _median(preds: np.ndarray, val_losses: Sequence[float] | None) -> np.ndarray:
    """Coordinate-wise median over members (each x and y separately)."""
    return np.median(preds, axis=0)


@AGGREGATORS.register("weighted")
def _weighted(preds: np.ndarray, val_losses: Sequence[float] | None) -> np.ndarray:
    """Weights proportional to 1 / validation loss, normalised to sum to 1."""
    if val_losses is None:
        raise SpecError("aggregation 'weighted' needs the members' validation losses")
    losses = np.asarray(val_losses, dtype=float)
    if losses.shape != (preds.shape[0],):
        raise SpecError(f"aggregation 'weighted' needs {preds.shape[0]} validation losses, got {losses.size}")
    if not np.all(np.isfinite(losses) & (losses > 0)):
        raise SpecError(f"aggregation 'weighted' needs finite positive validation losses, got {losses.tolist()}")
    weights = (1.0 / losses) / (1.0 / losses).sum()
    return np.tensordot(weights, preds, axes=1)


def aggregate_predictions(preds: np.ndarray, how: str, val_losses: Sequence[float] | None = None) -> np.ndarray:
    """Combine M members' predictions (M, N, L, 2) into one (N, L, 2).

    how: "mean", "median" (coordinate-wise) or "weighted" (weights 1/val_loss, normalised;
    val_losses, one per member, required). An unknown name raises SpecError listing the
    valid ones. Units are whatever the predictions are in.
    """
    aggregate = AGGREGATORS.get(how)
    preds = np.asarray(preds, dtype=float)
    if preds.ndim != 4 or preds.shape[0] == 0 or preds.shape[-1] != 2:
        raise ValueError(f"expected member predictions of shape (M, N, L, 2) with M >= 1, got {preds.shape}")
    return aggregate(preds, val_losses)
