"""Bulk inference with a trained HRNet job: its best k checkpoints, heatmaps averaged.

``HeatmapPredictor`` has the predictor interface of ``common.inference.predict`` (``image_size``,
``device``, ``predict(batch, sizes)``, ``qc_flags``, ``close``), so ``run_chunk`` serves it
unchanged: landmarks decode from the mean heatmap of the checkpoints (as the job's evaluation
does), and the spread per landmark is that of the checkpoints' own decoded points about their
mean (0 for one checkpoint). The flip test runs when the model was given flip pairs (as in its
evaluation); lateral cephalograms have none, and ``--tta flip`` is then refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medq.common.families.ceph.codec import HeatmapCodec
from medq.common.families.ceph.model import HEATMAP_STRIDE
from medq.common.families.ceph.train import heatmaps_of, load_hrnet
from medq.common.errors import SpecError
from medq.common.inference.qc import landmark_qc_flags
from medq.common.training.kit import pick_device


class HeatmapPredictor:
    qc_flags = staticmethod(landmark_qc_flags)

    def __init__(self, paths: Sequence[Path], aggregation: str = "mean", tta: str | None = None,
                 device: torch.device | str | None = None):
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
        self.device = torch.device(device) if device is not None else pick_device()
        self.use_amp = self.device.type == "cuda"
        self.models = [m.to(self.device).eval() for m, _ in loaded]
        self.image_size = spec.image_size
        self.codec = HeatmapCodec(spec.image_size, HEATMAP_STRIDE, spec.sigma, spec.refine)

    @torch.no_grad()
    def predict(self, batch: torch.Tensor, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (B, K, 2) and spread (B, K) in pixels of each ORIGINAL image; batch (B, 1, S, S)
        uint8 or float in [0, 1]; sizes (B, 2) (width, height)."""
        images = batch.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            maps = np.stack([heatmaps_of(m, images, self.flip_pairs).cpu().numpy() for m in self.models])
        scale = np.asarray(sizes, dtype=np.float64)[:, None, :] / self.image_size  # (B, 1, 2)
        landmarks = self.codec.decode(maps.mean(axis=0))[0] * scale
        each = np.stack([self.codec.decode(m)[0] * scale for m in maps])  # (M, B, K, 2)
        spread = np.sqrt(((each - each.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
        return landmarks, spread

    def close(self) -> None:
        self.models = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
