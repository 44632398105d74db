"""Keypoint-aware augmentation of chest radiographs (albumentations 2.x).

Coordinates are pixels, albumentations' "xy" format, 0-based. Two conventions follow from the
library and are relied on by the dataset and its tests:

- resize scales coordinates by the size ratio: ``x' = x * S / W`` (so ``x / W`` is preserved,
  which is what the normalised target is);
- a horizontal flip mirrors about the image centre on pixel centres: ``x' = (S - 1) - x``.

A flip also exchanges the anatomical sides, so after a flip every left/right landmark pair is
swapped (``schema.flip_permutation()``): output landmark 2 is the mirrored input landmark 3.
albumentations 2.0 has no label mapping for flips, so the pipeline records which transforms it
applied (``save_applied_params``) and the swap is done here when ``HorizontalFlip`` is among them.

The pipeline resizes first (cheaper augmentation at model size), then flip, rotation and
brightness/contrast; evaluation is resize only.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from medq.common.families.chest.schema import flip_permutation
from medq.common.families.chest.spec import EnsembleSpec

ROTATE_P = 0.5  # probability of a rotation, angle uniform in +-spec.rotation_deg
BRIGHTNESS_CONTRAST_P = 0.5  # probability of a brightness/contrast change
_FLIP_NAME = "HorizontalFlip"
_FLIP_PERMUTATION = np.asarray(flip_permutation())


def _compose(transforms: list) -> A.Compose:
    return A.Compose(
        transforms,
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        save_applied_params=True,
    )


def eval_transform(image_size: int) -> A.Compose:
    """Resize to ``image_size`` x ``image_size`` (bilinear); keypoints scale by ``S / W``, ``S / H``."""
    return _compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR)])


def train_transform(spec: EnsembleSpec) -> A.Compose:
    """Resize, flip (p = spec.flip_p), rotate (+-spec.rotation_deg), brightness/contrast."""
    transforms: list = [A.Resize(spec.image_size, spec.image_size, interpolation=cv2.INTER_LINEAR)]
    if spec.flip_p > 0:
        transforms.append(A.HorizontalFlip(p=spec.flip_p))
    if spec.rotation_deg > 0:
        transforms.append(
            A.Rotate(
                limit=spec.rotation_deg,
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=ROTATE_P,
            )
        )
    if spec.brightness > 0 or spec.contrast > 0:
        transforms.append(
            A.RandomBrightnessContrast(
                brightness_limit=spec.brightness, contrast_limit=spec.contrast, p=BRIGHTNESS_CONTRAST_P
            )
        )
    return _compose(transforms)


def apply_transform(
    transform: A.Compose, image: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Transform one image and its landmarks; swap left/right pairs when the image was flipped.

    image: (H, W) uint8 greyscale. points: (15, 2) float pixels of that image.
    Returns the transformed (S, S) uint8 image and (15, 2) float32 pixels in it. Points that
    leave the image (rotation) are kept, not dropped.
    """
    out = transform(image=image, keypoints=np.asarray(points, dtype=np.float32))
    keypoints = np.asarray(out["keypoints"], dtype=np.float32)[:, :2]
    if any(name == _FLIP_NAME for name, _ in out["applied_transforms"]):
        keypoints = keypoints[_FLIP_PERMUTATION]
    return out["image"], keypoints
