"""The heatmap codec of the cephalometric models: one object owns both directions.

Coordinates: input pixels (x, y) of the square model input of ``input_size``; heatmaps are
``input_size // stride`` on a side, and heatmap pixel ``i`` covers input pixels
``[i * stride, (i + 1) * stride)``, so its centre is at input ``(i + 0.5) * stride - 0.5``:

    u = (x + 0.5) / stride - 0.5        x = (u + 0.5) * stride - 0.5

``encode`` draws an unnormalised Gaussian (peak 1) with ``sigma = sigma_input / stride``
heatmap pixels around each landmark; a landmark outside the heatmap gives an all-zero map
and weight 0. ``decode`` takes the argmax and refines it to sub-pixel by the refinement named:

- ``"none"``: the integer argmax;
- ``"quadratic"``: per axis, the vertex of the parabola through the log values at the argmax
  and its two neighbours (exact for a Gaussian; the classic three-point Gaussian fit);
- ``"dark"``: DARK (Zhang et al., CVPR 2020): the map is smoothed with the codec's own Gaussian
  (a Gaussian stays a Gaussian), then one Newton step on its log, offset = -H^-1 grad, with
  central-difference derivatives, so x and y are refined together.

Pure numpy: it serves training targets (in DataLoader workers) and evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from medq.common.registry import Registry

EPS = 1e-10

Refinement = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
REFINEMENTS: Registry[Refinement] = Registry("sub-pixel refinement")


@dataclass(frozen=True)
class HeatmapCodec:
    input_size: int
    stride: int = 4
    sigma_input: float = 3.5  # Gaussian sigma in input pixels (DESIGN.md: about 3.5 at 512 px)
    refine: str = "dark"

    def __post_init__(self) -> None:
        REFINEMENTS.get(self.refine)  # an unknown name lists the valid ones
        if self.input_size % self.stride:
            raise ValueError(f"input_size {self.input_size} is not a multiple of the stride {self.stride}")
        if self.sigma_input <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma_input}")

    @property
    def heatmap_size(self) -> int:
        return self.input_size // self.stride

    @property
    def sigma(self) -> float:
        """Gaussian sigma in heatmap pixels."""
        return self.sigma_input / self.stride

    def to_heatmap(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64) + 0.5) / self.stride - 0.5

    def to_input(self, uv: np.ndarray) -> np.ndarray:
        return (np.asarray(uv, dtype=np.float64) + 0.5) * self.stride - 0.5

    def encode(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (K, H, H) float32 for landmarks (K, 2) in input pixels, and weights (K,)
        float32: 0 for a landmark outside the heatmap (its map is all zero)."""
        uv = self.to_heatmap(points)
        size = self.heatmap_size
        grid = np.arange(size, dtype=np.float64)
        inside = np.all((uv >= -0.5) & (uv <= size - 0.5), axis=1)
        gx = np.exp(-((grid[None, :] - uv[:, :1]) ** 2) / (2 * self.sigma**2))  # (K, W)
        gy = np.exp(-((grid[None, :] - uv[:, 1:]) ** 2) / (2 * self.sigma**2))  # (K, H)
        maps = gy[:, :, None] * gx[:, None, :]
        maps[~inside] = 0.0
        return maps.astype(np.float32), inside.astype(np.float32)

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (N, K, 2) in input pixels and peak values (N, K) of heatmaps (N, K, H, W)."""
        maps = np.asarray(heatmaps, dtype=np.float64)
        if maps.ndim != 4:
            raise ValueError(f"expected heatmaps of shape (N, K, H, W), got {maps.shape}")
        n, k, h, w = maps.shape
        flat = maps.reshape(n, k, -1)
        index = flat.argmax(axis=-1)
        peaks = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
        argmax = np.stack([index % w, index // w], axis=-1).astype(np.float64)  # (N, K, 2) as (u, v)
        refined = REFINEMENTS.get(self.refine)(maps, argmax, self.sigma)
        return self.to_input(refined), peaks


def _log(maps: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(maps, EPS))


@REFINEMENTS.register("none")
def _none(maps: np.ndarray, argmax: np.ndarray, sigma: float) -> np.ndarray:
    return argmax


@REFINEMENTS.register("quadratic")
def _quadratic(maps: np.ndarray, argmax: np.ndarray, sigma: float) -> np.ndarray:
    n, k, h, w = maps.shape
    logs = _log(maps)
    out = argmax.copy()
    for b in range(n):
        for j in range(k):
            u, v = int(argmax[b, j, 0]), int(argmax[b, j, 1])
            if 0 < u < w - 1:
                out[b, j, 0] += _vertex(logs[b, j, v, u - 1], logs[b, j, v, u], logs[b, j, v, u + 1])
            if 0 < v < h - 1:
                out[b, j, 1] += _vertex(logs[b, j, v - 1, u], logs[b, j, v, u], logs[b, j, v + 1, u])
    return out


def _vertex(left: float, centre: float, right: float) -> float:
    """Offset of the parabola's vertex through (-1, left), (0, centre), (1, right), within ±0.5."""
    curvature = left - 2 * centre + right
    if curvature >= -EPS:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of (N, K, H, W), edges replicated."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    padded = np.pad(maps, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge")
    h, w = maps.shape[-2:]
    rows = sum(t * padded[..., i:i + h, :] for i, t in enumerate(taps))
    return sum(t * rows[..., :, i:i + w] for i, t in enumerate(taps))


@REFINEMENTS.register("dark")
def _dark(maps: np.ndarray, argmax: np.ndarray, sigma: float) -> np.ndarray:
    n, k, h, w = maps.shape
    logs = _log(_gaussian_blur(maps, sigma))  # a scale factor would only add a constant to the log
    out = argmax.copy()
    for b in range(n):
        for j in range(k):
            u, v = int(argmax[b, j, 0]), int(argmax[b, j, 1])
            if not (1 <= u < w - 1 and 1 <= v < h - 1):
                continue
            m = logs[b, j]
            dx = 0.5 * (m[v, u + 1] - m[v, u - 1])
            dy = 0.5 * (m[v + 1, u] - m[v - 1, u])
            dxx = m[v, u + 1] - 2 * m[v, u] + m[v, u - 1]
            dyy = m[v + 1, u] - 2 * m[v, u] + m[v - 1, u]
            dxy = 0.25 * (m[v + 1, u + 1] - m[v + 1, u - 1] - m[v - 1, u + 1] + m[v - 1, u - 1])
            det = dxx * dyy - dxy**2
            if dxx >= 0 or det <= EPS:  # not a maximum: keep the argmax
                continue
            offset = -np.array([dyy * dx - dxy * dy, dxx * dy - dxy * dx]) / det
            out[b, j] += np.clip(offset, -1.0, 1.0)
    return out
