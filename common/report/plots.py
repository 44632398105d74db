"""Figures for reports, drawn with matplotlib's Agg backend and inlined as PNG data URIs (no
file beside the page, nothing fetched when it opens). Each function draws one kind of plot
from plain arrays and returns a ``page.Figure``."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medq.common.report.page import CurvePlot, Figure  # noqa: E402

DPI = 110
SIZE = (6.4, 3.6)  # inches: readable in a page column and on paper
plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                     "axes.spines.right": False, "savefig.bbox": "tight", "figure.max_open_warning": 0})


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def finish(fig, title: str, caption: str, alt: str = "") -> Figure:
    """A drawn matplotlib figure as a page Figure (PNG data URI); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return Figure(title, data_uri(buffer.getvalue()), caption, alt or title)


def _integer_epochs(ax, xlabel: str) -> None:
    """Epochs are whole numbers: no tick at epoch 1.2."""
    if xlabel == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves(plot: CurvePlot, *, logy: bool = False, ylim: tuple[float, float] | None = None,
           markers: bool = False, size: tuple[float, float] = SIZE) -> Figure:
    """Lines (x, y) with a legend: learning curves, CED, SDR."""
    fig, ax = plt.subplots(figsize=size)
    for line in plot.curves:
        ax.plot(line.x, line.y, line.style, label=line.label, color=line.color,
                marker="o" if markers or len(line.x) == 1 else None, markersize=3)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    _integer_epochs(ax, plot.xlabel)
    if logy:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    if len(plot.curves) > 1 or (plot.curves and plot.curves[0].label):
        ax.legend(fontsize=8, loc="best")
    return finish(fig, plot.title, plot.caption)


def panels(title: str, plots: Sequence[CurvePlot], caption: str = "", *, logy: Sequence[bool] = ()) -> Figure:
    """Several small line plots side by side (a member's loss, metric and learning rate)."""
    fig, axes = plt.subplots(1, len(plots), figsize=(3.4 * len(plots), 3.0), squeeze=False)
    for i, (ax, plot) in enumerate(zip(axes[0], plots)):
        for line in plot.curves:
            ax.plot(line.x, line.y, line.style, label=line.label, color=line.color,
                    marker="o" if len(line.x) <= 2 else None, markersize=3)
        ax.set_title(plot.title, fontsize=9)
        ax.set_xlabel(plot.xlabel)
        ax.set_ylabel(plot.ylabel)
        _integer_epochs(ax, plot.xlabel)
        if i < len(logy) and logy[i]:
            ax.set_yscale("log")
        if len(plot.curves) > 1:
            ax.legend(fontsize=6.5, ncol=2 if len(plot.curves) > 6 else 1)
    fig.tight_layout()
    return finish(fig, title, caption)


def bars(title: str, labels: Sequence[str], values: Sequence[float], errors: Sequence[float] | None = None, *,
         ylabel: str, caption: str = "", horizontal: bool = False) -> Figure:
    """Bars with optional error bars (per-landmark error ± SD)."""
    fig, ax = plt.subplots(figsize=SIZE)
    positions = np.arange(len(labels))
    if horizontal:
        ax.barh(positions, values, xerr=errors, capsize=2, color="#4a7ab5")
        ax.set_yticks(positions, labels)
        ax.set_xlabel(ylabel)
        ax.invert_yaxis()
    else:
        ax.bar(positions, values, yerr=errors, capsize=2, color="#4a7ab5")
        ax.set_xticks(positions, labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
        ax.set_ylabel(ylabel)
    return finish(fig, title, caption)


def boxes(title: str, groups: dict[str, Sequence[float]], *, ylabel: str, caption: str = "") -> Figure:
    """Box plots of several distributions (per-slice Dice per class)."""
    fig, ax = plt.subplots(figsize=SIZE)
    names = [name for name, values in groups.items() if len(values)]
    ax.boxplot([np.asarray(groups[name], dtype=float) for name in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel(ylabel)
    return finish(fig, title, caption)


def histogram(title: str, edges: Sequence[float], counts: Sequence[float], *, xlabel: str, ylabel: str = "studies",
              caption: str = "") -> Figure:
    """A histogram from bin edges and counts already computed (in SQL, in constant memory)."""
    fig, ax = plt.subplots(figsize=SIZE)
    edges = np.asarray(edges, dtype=float)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4a7ab5", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.25 of a study
    return finish(fig, title, caption)


def image_with_points(title: str, image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, *, caption: str = "",
                      size: float = 2.6) -> Figure:
    """A greyscale image with the true landmarks (green circles) and the predicted ones (red
    crosses), each pair joined by a line: one gallery tile."""
    fig, ax = plt.subplots(figsize=(size, size * image.shape[0] / max(image.shape[1], 1)))
    ax.imshow(image, cmap="gray")
    if truth is not None:
        for (tx, ty), (px, py) in zip(truth, pred):
            ax.plot([tx, px], [ty, py], color="yellow", linewidth=0.8)
        ax.scatter(truth[:, 0], truth[:, 1], s=14, facecolors="none", edgecolors="lime", linewidths=1.0, label="truth")
    ax.scatter(pred[:, 0], pred[:, 1], s=14, c="red", marker="x", linewidths=1.0, label="prediction")
    ax.set_axis_off()
    ax.grid(False)
    return finish(fig, title, caption)


def png_file(title: str, path, caption: str = "") -> Figure | None:
    """A PNG the job already wrote (a review overlay), inlined; None when it is not there."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    return Figure(title, data_uri(path.read_bytes()), caption, title)
