"""MaskNet = ViT backbone + attention decoder, built from a name like timm's models."""

from __future__ import annotations

import torch
from torch import nn

from mal.backbone import create_backbone, feature_grid, feature_map
from mal.decoder import MaskDecoder


class MaskNet(nn.Module):
    """Normalised box crops and box areas in, mask logits out."""

    def __init__(self, backbone: nn.Module, decoder: MaskDecoder):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, images: torch.Tensor, box_areas: torch.Tensor, out_size: int) -> torch.Tensor:
        return self.decoder(feature_map(self.backbone, images), box_areas, out_size)

    @property
    def logit_size(self) -> int:
        """Side of the mask logits at prediction: 4x the token grid (128 at a 512 crop with 16-pixel patches),
        the size of the original's logits."""
        return 4 * feature_grid(self.backbone)


def build_mask_net(
    arch: str,
    crop_size: int,
    conv_stem: bool = False,
    drop_path_rate: float = 0.0,
    backbone_kwargs: dict | None = None,
    num_convs: int = 4,
    hidden_channels: int = 256,
    out_channels: int = 256,
    scale_adaptive: bool = True,
    scale_ratio_pre: float = 1.0,
    scale_ratio: float = 2.0,
    feature_stride: int = 16,
) -> MaskNet:
    backbone = create_backbone(arch, crop_size, conv_stem, drop_path_rate, feature_stride, **(backbone_kwargs or {}))
    decoder = MaskDecoder(
        backbone.embed_dim, num_convs, hidden_channels, out_channels, scale_adaptive, scale_ratio_pre, scale_ratio
    )
    return MaskNet(backbone, decoder)
