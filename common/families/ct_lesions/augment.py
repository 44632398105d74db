"""albumentations pipelines for a normalised CT slice and its class-index mask, moved together.

Training (DESIGN.md, family 3): resize to the model size, horizontal and vertical flips, a
quarter turn, an affine (rotation, scale, translation) and brightness/contrast, the last on the
image only. The image is the clipped HU mapped onto [0, 1] (``HUNormaliser.unit``):
albumentations' intensity transforms clip float images to [0, 1], so z-scores must not reach
them; brightness and contrast limits are fractions of the HU window. The mask always takes nearest-neighbour interpolation, so it keeps its class values;
pixels the affine brings in from outside are air in the image and background in the mask.
"""

from __future__ import annotations

import albumentations as A
import cv2

from medq.common.families.ct_lesions.schema import BACKGROUND
from medq.common.families.ct_lesions.spec import SegmentSpec


def seg_transform(spec: SegmentSpec, train: bool, air: float = 0.0) -> A.Compose:
    """``air``: the [0, 1] value of air (-1000 HU), the fill of pixels from outside."""
    steps: list[A.BasicTransform] = [A.Resize(spec.image_size, spec.image_size, interpolation=cv2.INTER_LINEAR,
                                              mask_interpolation=cv2.INTER_NEAREST)]
    if train:
        steps += [
            A.HorizontalFlip(p=spec.flip_p),
            A.VerticalFlip(p=spec.flip_p),
            A.RandomRotate90(p=spec.rotate90_p),
            A.Affine(rotate=(-spec.rotation_deg, spec.rotation_deg), scale=spec.scale,
                     translate_percent=(-spec.translate, spec.translate), interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=air,
                     fill_mask=BACKGROUND, p=0.7),
            A.RandomBrightnessContrast(spec.brightness, spec.contrast, p=0.5),
        ]
    return A.Compose(steps)
