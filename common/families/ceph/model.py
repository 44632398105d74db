"""HRNet heatmap model: timm's HRNet branches (no weights downloaded) and an HRNetV2 head.

The four branches (strides 4, 8, 16, 32) are upsampled to stride 4, concatenated and mapped by
1x1 convolutions to one heatmap per landmark at 1/4 of the input: the codec's stride.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medq.common.errors import unknown_name

log = logging.getLogger(__name__)

HRNET_WIDTHS = {"w18s": "hrnet_w18_small_v2", "w18": "hrnet_w18", "w32": "hrnet_w32", "w48": "hrnet_w48"}
HEATMAP_STRIDE = 4


class HRNetHeatmaps(nn.Module):
    def __init__(self, width: str, n_landmarks: int, in_chans: int = 1):
        super().__init__()
        if width not in HRNET_WIDTHS:
            raise unknown_name("HRNet width", width, HRNET_WIDTHS)
        import timm

        self.backbone = timm.create_model(HRNET_WIDTHS[width], pretrained=False, features_only=True,
                                          feature_location="", out_indices=(1, 2, 3, 4), in_chans=in_chans)
        channels = sum(self.backbone.feature_info.channels())
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, n_landmarks, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        branches = self.backbone(images)
        size = branches[0].shape[-2:]
        fused = torch.cat([branches[0], *(F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                                          for b in branches[1:])], dim=1)
        return self.head(fused)


def build_hrnet(width: str, n_landmarks: int, pretrained: str | None = None) -> HRNetHeatmaps:
    """Random initialisation unless ``pretrained`` names a local timm HRNet state dict (its
    classifier keys are ignored); nothing is downloaded."""
    model = HRNetHeatmaps(width, n_landmarks)
    if pretrained:
        from timm.models import adapt_input_conv

        state = torch.load(Path(pretrained), map_location="cpu", weights_only=True)
        if "conv1.weight" in state:  # ImageNet weights see RGB; a radiograph is one channel
            state["conv1.weight"] = adapt_input_conv(1, state["conv1.weight"])
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        log.info("loaded %s: %d missing, %d unused keys", pretrained, len(missing), len(unexpected))
    else:
        log.warning("random initialisation: no local HRNet weights given")
    return model
