"""A torch Dataset of chest radiographs and their 15 landmarks, images decoded once up front.

An item is ``(image, target)``:

- image: float32 (1, S, S) in [0, 1] (grey / 255). The model repeats it to 3 channels and applies
  the ImageNet normalisation itself, so every caller feeds the same thing.
- target: float32 (15, 2), pixel coordinates in the S x S output divided by S, i.e. in [0, 1]
  for points inside the image (a rotation may push a point slightly outside).

Augmentation is reproducible and independent of loader workers and of iteration order: item
``i`` of epoch ``e`` is augmented with a random state seeded from ``(seed, e, i)``. A training
loop calls ``set_epoch`` before each epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medq.common.errors import DataError
from medq.common.families.chest.augment import apply_transform
from medq.common.families.chest.csvio import CSV_NAME, IMAGES_DIR, LandmarkRecord, read_landmark_csv


def dataset_paths(data_dir: Path) -> tuple[Path, Path]:
    """(landmarks.csv, images folder) of a dataset folder (the layout csvio describes)."""
    data_dir = Path(data_dir)
    return data_dir / CSV_NAME, data_dir / IMAGES_DIR


def split_records(
    data_dir: Path, split: Mapping[str, Sequence[str]], parts: Sequence[str]
) -> dict[str, list[LandmarkRecord]]:
    """The records of each split part (stems in the split's order), read once from landmarks.csv."""
    csv_path, _ = dataset_paths(data_dir)
    by_stem = {record.stem: record for record in read_landmark_csv(csv_path)}
    problems = [
        f"{csv_path.name}: no row for {part} stem {stem!r}"
        for part in parts
        for stem in split.get(part, ())
        if stem not in by_stem
    ]
    problems += [f"split part {part!r} is empty" for part in parts if not split.get(part)]
    if problems:
        raise DataError(problems)
    return {part: [by_stem[stem] for stem in split[part]] for part in parts}


def preload_images(images_dir: Path, stems: Sequence[str]) -> dict[str, np.ndarray]:
    """Decode ``images_dir/<stem>.png`` once per stem as (H, W) uint8 greyscale.

    Colour images are converted to grey; 16-bit images are reduced to 8 bits (OpenCV's
    ``IMREAD_GRAYSCALE``). Raises one DataError naming every missing or unreadable file.
    """
    images: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for stem in dict.fromkeys(stems):
        path = Path(images_dir) / f"{stem}.png"
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
        if image is None:
            problems.append(f"{path}: {'missing' if not path.is_file() else 'cannot be decoded'}")
            continue
        images[stem] = image
    if problems:
        raise DataError(problems)
    return images


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation random seed of item ``index`` in ``epoch`` (a 32-bit int)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class LandmarkDataset(Dataset):
    """Records + preloaded greyscale images -> (image (1, S, S), target (15, 2) in [0, 1])."""

    def __init__(
        self,
        records: Sequence[LandmarkRecord],
        images: Mapping[str, np.ndarray],
        transform: A.Compose,
        seed: int = 0,
    ):
        missing = [record.stem for record in records if record.stem not in images]
        if missing:
            raise DataError([f"no preloaded image for {stem!r}" for stem in missing])
        self.records = list(records)
        self.images = [images[record.stem] for record in self.records]
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_sizes(self) -> np.ndarray:
        """(N, 2) int (width, height) of the original images, in pixels."""
        return np.array([(image.shape[1], image.shape[0]) for image in self.images], dtype=np.int64)

    @property
    def points_px(self) -> np.ndarray:
        """(N, 15, 2) float64 ground truth in pixels of the original images."""
        return np.stack([np.asarray(record.points, dtype=np.float64) for record in self.records])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.transform.set_random_seed(augment_seed(self.seed, self.epoch, index))
        image, points = apply_transform(self.transform, self.images[index], self.records[index].points)
        size_y, size_x = image.shape[:2]
        target = points / np.array([size_x, size_y], dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32).div_(255.0)
        return tensor.unsqueeze(0), torch.from_numpy(target.astype(np.float32))


def to_original_pixels(pred: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """Normalised predictions (N, 15, 2) -> pixels of each original image: x * width, y * height.

    This inverts the resize convention of ``augment`` (``x' = x * S / W``), so a prediction
    normalised by S maps back exactly.
    """
    return np.asarray(pred, dtype=np.float64) * np.asarray(image_sizes, dtype=np.float64)[:, None, :]
