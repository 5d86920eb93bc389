"""MAL's attention-based mask decoder.

A key vector K (an MLP on the globally pooled features) is matched against per-pixel values V (a small
conv head): mask logits = K . V. In the scale-adaptive variant the feature map is resized according to
the object's size bucket before V, so large objects get finer masks. Resizes are bilinear, as in the
original MAL (its logits on ../shared/parity/mal are reproduced within 2e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO size buckets: [0, 32^2), [32^2, 96^2), [96^2, inf)


def size_bucket(box_areas: torch.Tensor) -> torch.Tensor:
    """0 small, 1 medium, 2 large; every area falls into exactly one bucket (the original's bounds are strict,
    so an area of exactly 32^2 or 96^2 fell in none: we use closed intervals)."""
    return (box_areas >= SMALL_AREA).long() + (box_areas >= MEDIUM_AREA).long()


class MaskDecoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_convs: int = 4,
        hidden_channels: int = 256,
        out_channels: int = 256,
        scale_adaptive: bool = True,
        scale_ratio_pre: float = 1.0,
        scale_ratio: float = 2.0,
    ):
        super().__init__()
        self.key_mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels), nn.ReLU(inplace=True), nn.Linear(hidden_channels, out_channels)
        )
        convs = []
        for i in range(num_convs):
            c_in = in_channels if i == 0 else hidden_channels
            c_out = out_channels if i == num_convs - 1 else hidden_channels
            convs.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)))
        self.value_convs = nn.ModuleList(convs)
        # Feature-map scale for small / medium / large boxes: pre x ratio^(bucket - 1), i.e. 0.5x / 1x / 2x at
        # TAO's defaults (1, 2.0), which is what the original does there (REFERENCE.md 2a, measured).
        if scale_adaptive:
            self.scales = tuple(scale_ratio_pre * scale_ratio ** (bucket - 1) for bucket in range(3))
        else:
            self.scales = (1.0, 1.0, 1.0)

    def values(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w -> B x out_channels x 2h x 2w, each box's values independent of its batch: on a CPU
        PyTorch convolves a single small map (under 20480 values) with its native kernel, and a non-contiguous
        map (the ViT's tokens, channels-last) on another oneDNN path; so one box runs as two (itself twice) and
        the features are made contiguous (tests/test_output_independence.py)."""
        single = features.shape[0] == 1
        features = features.repeat(2, 1, 1, 1) if single else features.contiguous()
        for i, conv in enumerate(self.value_convs):
            if i == len(self.value_convs) - 1:
                features = F.interpolate(features, scale_factor=2.0, mode="bilinear", align_corners=False)
            features = conv(features)
        return features[:1] if single else features

    def keys(self, pooled: torch.Tensor) -> torch.Tensor:
        """B x C pooled features -> B x out_channels keys: `key_mlp`, with each Linear summed box by box in a
        fixed order, so that a box's key does not depend on the other boxes in its batch (a small-batch GEMM
        picks its kernel by the batch size: keys differed by 3e-8 between batches of 3 and 8 on a CPU, enough
        to change a rounded score)."""
        first, relu, second = self.key_mlp
        hidden = relu((pooled[:, None, :] * first.weight).sum(-1) + first.bias)
        return (hidden[:, None, :] * second.weight).sum(-1) + second.bias

    def forward(self, features: torch.Tensor, box_areas: torch.Tensor, out_size: int) -> torch.Tensor:
        """B x C x h x w features -> B x 1 x out_size x out_size mask logits."""
        keys = self.keys(features.float().mean(dim=(2, 3)))
        logits = features.new_empty((features.shape[0], 1, out_size, out_size))
        buckets = size_bucket(box_areas)
        for bucket, scale in enumerate(self.scales):
            index = (buckets == bucket).nonzero(as_tuple=True)[0]
            if len(index) == 0:
                continue
            group = features[index]
            if scale != 1.0:
                group = F.interpolate(group, scale_factor=scale, mode="bilinear", align_corners=False)
            group_logits = torch.einsum("bc,bchw->bhw", keys[index], self.values(group))[:, None]
            logits[index] = F.interpolate(
                group_logits, size=(out_size, out_size), mode="bilinear", align_corners=False
            ).to(logits.dtype)
        return logits
