"""Bulk inference with a trained HRNet job: its best k checkpoints, heatmaps averaged.

``HeatmapPredictor`` is a ``LandmarkPredictor`` (``medq.common.inference.landmarks``): the
shared landmark machinery decodes the studies, checks the spread and that every landmark lies
inside the image, and records millimetres; this gives ``locate``. Landmarks decode from the
mean heatmap of the checkpoints (as the job's evaluation does), and the spread per landmark is
that of the checkpoints' own decoded points about their mean (0 for one checkpoint). The flip
test runs when the model was given flip pairs (as in its evaluation); lateral cephalograms have
none, and ``--tta flip`` is then refused (at submit already, by ``infer.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medq.common.errors import SpecError
from medq.common.families.ceph.codec import HeatmapCodec
from medq.common.families.ceph.model import HEATMAP_STRIDE
from medq.common.families.ceph.schema import LANDMARKS, SR_DISTANCES
from medq.common.families.ceph.train import heatmaps_of, load_hrnet
from medq.common.training.kit import pick_device
from medq.common.inference.landmarks import LandmarkPredictor


class HeatmapPredictor(LandmarkPredictor):
    landmark_names = LANDMARKS
    sr_distances = SR_DISTANCES

    def __init__(self, paths: Sequence[Path], aggregation: str = "mean", tta: str | None = None,
                 device: torch.device | str | None = None, **options: Any):
        """``options``: those of ``LandmarkPredictor`` (studies_per_batch, out_dir, spread_limit_fraction)."""
        if aggregation != "mean":
            raise SpecError(f"an HRNet model averages its checkpoints' heatmaps: aggregation 'mean' only, "
                            f"got {aggregation!r}")
        loaded = [load_hrnet(Path(p)) for p in paths]
        self.flip_pairs = loaded[0][1].flip_pairs
        if tta not in (None, "none") and not self.flip_pairs:
            raise SpecError("no flip test for this model: it was trained without left/right landmark pairs")
        sizes = {spec.image_size for _, spec in loaded}
        if len(sizes) > 1:
            raise SpecError(f"checkpoints trained at different image sizes: {sorted(sizes)}")
        spec = loaded[0][1]
        super().__init__(spec.image_size, torch.device(device) if device is not None else pick_device(), **options)
        self.use_amp = self.device.type == "cuda"
        self.models = [m.to(self.device).eval() for m, _ in loaded]
        self.codec = HeatmapCodec(spec.image_size, HEATMAP_STRIDE, spec.sigma, spec.refine)

    @torch.no_grad()
    def locate(self, images: torch.Tensor, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (B, K, 2) and spread (B, K) in pixels of each ORIGINAL image; images (B, 1, S, S)
        uint8 or float in [0, 1]; sizes (B, 2) (width, height)."""
        images = self.to_device(images, self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            maps = np.stack([heatmaps_of(m, images, self.flip_pairs).cpu().numpy() for m in self.models])
        scale = np.asarray(sizes, dtype=np.float64)[:, None, :] / self.image_size  # (B, 1, 2)
        landmarks = self.codec.decode(maps.mean(axis=0))[0] * scale
        each = np.stack([self.codec.decode(m)[0] * scale for m in maps])  # (M, B, K, 2)
        return landmarks, self.spread(each)
