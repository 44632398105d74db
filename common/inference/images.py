"""Studies that are one 2D image, decoded for a model of a fixed square input size.

``ImageDecoder`` is the ``StudyDecoder`` of the landmark families: the file's bytes (read from
the archive in a loader process) become a display-ready grey image (``readers.decode_image``),
resized bilinearly to S x S (``cv2.resize``, as albumentations' ``Resize`` does in training)
and sent as uint8: a quarter of float32's bytes between processes, scaled on the device. A batch
is one (B, 1, S, S) uint8 tensor with what each study's record needs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from medq.common.inference.chunk import StudyDecoder
from medq.common.inference.readers import decode_image
from medq.common.inference.types import StudyError


@dataclass(frozen=True)
class ImageInfo:
    """What a study's record needs of its image."""

    size: tuple[int, int]  # (width, height) of the original
    spacing_mm: tuple[float, float] | None  # (row, column) mm per pixel
    uids: dict[str, str]
    source_format: str
    pixels: np.ndarray | None  # the original (H, W) uint8, kept only when overlays are drawn
    header: Any = None  # a DICOM source's dataset without pixels, kept only when a DICOM SR is written
    spacing_source: str | None = None  # PixelSpacing or ImagerPixelSpacing (a DICOM source's)


@dataclass(frozen=True)
class StudyImage:
    image: torch.Tensor  # (1, S, S) uint8
    info: ImageInfo


@dataclass(frozen=True)
class ImageBatch:
    images: torch.Tensor  # (B, 1, S, S) uint8
    infos: list[ImageInfo]

    @property
    def sizes(self) -> np.ndarray:
        """(B, 2) float64 (width, height) of the originals."""
        return np.array([info.size for info in self.infos], dtype=np.float64)


class ImageDecoder(StudyDecoder):
    def __init__(self, image_size: int, keep_pixels: bool = False, keep_header: bool = False):
        self.image_size, self.keep_pixels, self.keep_header = int(image_size), keep_pixels, keep_header

    def decode(self, archive, key: str) -> StudyImage:
        decoded = decode_image(archive.read(key))
        pixels = np.asarray(decoded.pixels)
        if pixels.ndim != 2 or pixels.dtype != np.uint8 or min(pixels.shape) < 1:
            raise StudyError(f"decoder returned {pixels.dtype} pixels of shape {pixels.shape}, "
                             "not a (H, W) uint8 image")
        s = self.image_size
        resized = cv2.resize(pixels, (s, s), interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(np.ascontiguousarray(resized)).unsqueeze(0)
        return StudyImage(image, ImageInfo(decoded.size, decoded.spacing_mm, dict(decoded.uids), decoded.source_format,
                                           pixels if self.keep_pixels else None,
                                           decoded.header if self.keep_header else None, decoded.spacing_source))

    def collate(self, items: list[StudyImage]) -> ImageBatch:
        return ImageBatch(torch.stack([item.image for item in items]), [item.info for item in items])
