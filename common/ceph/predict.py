"""Bulk inference with a trained HRNet job: its best k checkpoints, heatmaps averaged.

``HeatmapPredictor`` has the predictor interface of ``common.inference.predict`` (``image_size``,
``device``, ``predict(batch, sizes)``, ``qc_flags``, ``close``), so ``run_chunk`` serves it
unchanged: landmarks decode from the mean heatmap of the checkpoints (as the job's evaluation
does), and the spread per landmark is that of the checkpoints' own decoded points about their
mean (0 for one checkpoint). No flip test: lateral cephalograms have no left/right pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.ceph.codec import HeatmapCodec
from common.ceph.model import HEATMAP_STRIDE
from common.ceph.train import load_hrnet
from common.errors import SpecError
from common.inference.qc import landmark_qc_flags
from common.landmarks.train import pick_device


class HeatmapPredictor:
    qc_flags = staticmethod(landmark_qc_flags)

    def __init__(self, paths: Sequence[Path], aggregation: str = "mean", tta: str | None = None,
                 device: torch.device | str | None = None):
        if aggregation != "mean":
            raise SpecError(f"an HRNet model averages its checkpoints' heatmaps: aggregation 'mean' only, "
                            f"got {aggregation!r}")
        if tta not in (None, "none"):
            raise SpecError("no flip test for cephalometric models: they have no left/right landmark pairs")
        loaded = [load_hrnet(Path(p)) for p in paths]
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
            maps = np.stack([m(images).float().cpu().numpy() for m in self.models])  # (M, B, K, h, w)
        scale = np.asarray(sizes, dtype=np.float64)[:, None, :] / self.image_size  # (B, 1, 2)
        landmarks = self.codec.decode(maps.mean(axis=0))[0] * scale
        each = np.stack([self.codec.decode(m)[0] * scale for m in maps])  # (M, B, K, 2)
        spread = np.sqrt(((each - each.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
        return landmarks, spread

    def close(self) -> None:
        self.models = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
