"""The chest-landmark regressor: a torchvision ResNet backbone and a 30-output regression head.

Input: (B, 1, S, S) grey in [0, 1] (or (B, 3, S, S)); the model repeats grey to 3 channels and
applies the ImageNet mean/std itself. Output: (B, 30) in [0, 1] (sigmoid), ordered
``x1, y1, ..., x15, y15`` and normalised by the input size.

Backbones come from a registry whose names equal ``common.specs.LANDMARK_BACKBONES``; they are
built with ``weights=None`` (nothing is ever downloaded). ``load_pretrained`` then loads ImageNet
weights from a local file or the torch hub cache when there are any.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import torch
import torchvision
from torch import nn

from medq.common.errors import SpecError
from medq.common.families.chest.schema import N_LANDMARKS
from medq.common.registry import Registry
from medq.common.families.chest.spec import EnsembleSpec

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_WIDTHS = (512, 256)
HEAD_DROPOUT = (0.5, 0.25, 0.125)

BackboneFactory = Callable[[], tuple[nn.Module, int]]  # -> (feature extractor, feature width)
BACKBONES: Registry[BackboneFactory] = Registry("model")


def _torchvision_resnet(name: str) -> BackboneFactory:
    def build() -> tuple[nn.Module, int]:
        net = getattr(torchvision.models, name)(weights=None)
        width = net.fc.in_features
        net.fc = nn.Identity()  # the backbone ends at global average pooling
        return net, width

    return build


for _name in ("resnet18", "resnet34", "resnet50"):
    BACKBONES.register(_name)(_torchvision_resnet(_name))


def regression_head(in_features: int, n_outputs: int = 2 * N_LANDMARKS) -> nn.Sequential:
    """in -> 512 -> 256 -> 30 with dropout 0.5 / 0.25 / 0.125 before each linear, ReLU, sigmoid."""
    (w1, w2), (p1, p2, p3) = HEAD_WIDTHS, HEAD_DROPOUT
    return nn.Sequential(
        nn.Dropout(p1),
        nn.Linear(in_features, w1),
        nn.ReLU(inplace=True),
        nn.Dropout(p2),
        nn.Linear(w1, w2),
        nn.ReLU(inplace=True),
        nn.Dropout(p3),
        nn.Linear(w2, n_outputs),
        nn.Sigmoid(),
    )


class LandmarkRegressor(nn.Module):
    """backbone -> head; grey input is repeated to 3 channels and ImageNet-normalised inside."""

    def __init__(self, backbone: nn.Module, width: int):
        super().__init__()
        self.backbone = backbone
        self.head = regression_head(width)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = (images - self.mean) / self.std
        return self.head(self.backbone(images))


def build_model(spec: EnsembleSpec) -> LandmarkRegressor:
    """A randomly initialised regressor for ``spec.backbone`` (call ``load_pretrained`` after)."""
    backbone, width = BACKBONES.get(spec.backbone)()
    return LandmarkRegressor(backbone, width)


def backbone_parameters(model: LandmarkRegressor) -> Iterator[nn.Parameter]:
    return model.backbone.parameters()


def head_parameters(model: LandmarkRegressor) -> Iterator[nn.Parameter]:
    return model.head.parameters()


def cached_weights(backbone: str) -> Path | None:
    """The torch hub cache's ImageNet file for ``backbone`` (``resnet18-*.pth``), if present."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{backbone}-*.pth")) if folder.is_dir() else []
    return found[0] if found else None


def load_pretrained(model: LandmarkRegressor, spec: EnsembleSpec) -> str:
    """Load ImageNet backbone weights without downloading; return where they came from.

    ``spec.pretrained`` names a local file: a torchvision state dict (its ``fc.*`` keys are
    ignored) or a medq checkpoint (a dict with "model", loaded into the whole model). Without it,
    the torch hub cache is searched. With neither, the model keeps its random initialisation
    and a warning is logged. Returns the file path, or "random".
    """
    path = Path(spec.pretrained) if spec.pretrained else cached_weights(spec.backbone)
    if path is None:
        log.warning("random initialisation: no local ImageNet weights for %s", spec.backbone)
        return "random"
    if not path.is_file():
        raise SpecError(f"pretrained weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: the job cannot run as specified
        raise SpecError(f"pretrained weights file {path} cannot be read: {exc}") from None
    try:
        if isinstance(state, dict) and "model" in state:
            model.load_state_dict(state["model"])
        else:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            model.backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SpecError(f"pretrained weights file {path} does not fit {spec.backbone}: {exc}") from None
    log.info("loaded pretrained weights from %s", path)
    return str(path)
