"""Review pictures of CT segmentations (Pillow).

- ``review_panel``: four panels side by side: the slice (lung window), the truth, the
  prediction, and the agreement map of the lesions (any lesion class): true positive yellow,
  false positive red, false negative green, over the grey slice.
- ``prediction_panel``: the slice and the prediction, for studies without a truth (bulk inference).

Class colours: ground glass orange, consolidation magenta, other lung light blue, background none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from medq.common.atomic_files import write_atomic
from medq.common.families.ct_lesions.schema import LESIONS

LUNG_WINDOW = (-1350.0, 150.0)  # HU shown from black to white (centre -600, width 1500)
CLASS_COLOURS = {0: (255, 150, 0), 1: (230, 0, 200), 2: (90, 150, 255)}
TP, FP, FN = (255, 230, 0), (235, 30, 30), (40, 220, 60)
ALPHA = 0.45


def window(hu: np.ndarray, low: float = LUNG_WINDOW[0], high: float = LUNG_WINDOW[1]) -> np.ndarray:
    """(H, W) HU -> (H, W, 3) uint8 grey in the lung window."""
    grey = np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0, 1) * 255
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _paint(rgb: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> None:
    rgb[where] = (rgb[where] * (1 - ALPHA) + np.array(colour) * ALPHA).astype(np.uint8)


def classes_rgb(hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = window(hu)
    for c, colour in CLASS_COLOURS.items():
        _paint(rgb, labels == c, colour)
    return rgb


def agreement_rgb(hu: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Lesion agreement: TP yellow, FP red, FN green (a pixel is "lesion" in any lesion class)."""
    p, t = np.isin(pred, LESIONS), np.isin(truth, LESIONS)
    rgb = window(hu)
    for where, colour in ((p & t, TP), (p & ~t, FP), (~p & t, FN)):
        rgb[where] = colour
    return rgb


def _save(panels: Sequence[np.ndarray], path: Path) -> Path:
    image = Image.fromarray(np.concatenate(panels, axis=1))
    return write_atomic(Path(path), lambda handle: image.save(handle, format="PNG"))


def review_panel(hu: np.ndarray, pred: np.ndarray, truth: np.ndarray, path: Path) -> Path:
    return _save([window(hu), classes_rgb(hu, truth), classes_rgb(hu, pred), agreement_rgb(hu, pred, truth)], path)


def prediction_panel(hu: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    return _save([window(hu), classes_rgb(hu, pred)], path)


def write_review_overlays(sources, indices: Sequence[int], pred: np.ndarray, truth: np.ndarray, out_dir: Path,
                          n: int) -> Path:
    """Panels of the ``n`` slices with the most lesion pixels in truth or prediction, named
    ``slice-<global index>.png``; returns the folder."""
    from medq.common.families.ct_lesions.data import slice_arrays

    lesion = (np.isin(pred, LESIONS) | np.isin(truth, LESIONS)).sum(axis=(1, 2))
    chosen = sorted(np.argsort(-lesion, kind="stable")[:n].tolist())
    for k, (hu, _) in zip(chosen, slice_arrays(sources, [indices[k] for k in chosen])):
        review_panel(hu, pred[k], truth[k], Path(out_dir) / f"slice-{indices[k]}.png")
    return Path(out_dir)
