"""The segmentation network: any segmentation-models-pytorch architecture and encoder by name,
one input channel (HU z-scores), one output channel per class; nothing is downloaded."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from medq.common.errors import SpecError

log = logging.getLogger(__name__)


def build_segmenter(arch: str, encoder: str, n_classes: int, pretrained: str | None = None,
                    weights_follow: bool = False) -> nn.Module:
    """Random initialisation unless ``pretrained`` names a local state dict: of the whole model
    (keys as this model's) or of the encoder alone (smp encoder keys); never a download."""
    import segmentation_models_pytorch as smp

    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=1, classes=n_classes)
    except (KeyError, ValueError, RuntimeError) as exc:  # smp's unknown-name errors, timm's for tu-
        raise SpecError(f"cannot build {arch} with encoder {encoder}: {exc}") from exc
    if pretrained:
        state = torch.load(Path(pretrained), map_location="cpu", weights_only=True)
        target = model if any(k.startswith("encoder.") for k in state) else model.encoder
        missing, unexpected = target.load_state_dict(state, strict=False)
        log.info("loaded %s: %d missing, %d unused keys", pretrained, len(missing), len(unexpected))
    elif not weights_follow:  # a checkpoint's weights are loaded next: nothing to warn about
        log.warning("random initialisation: no local weights given for %s / %s", arch, encoder)
    return model
