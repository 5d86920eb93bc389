"""Multi-scale deformable sampling (the core of Grounding DINO's deformable attention), in fp32.

transformers' pure-PyTorch `MultiScaleDeformableAttention` samples every level with `grid_sample`,
stacks the four levels' samples and then weights and sums them. At 800x1333 the stacked tensor is
8 heads x 32 channels x ~22k queries x 16 points (360 MB in fp32) per encoder layer; building and
weighting it cost about as much as the sampling itself. `sample_levels` computes the same sums level
by level, weighting each level's samples in place. It also runs in fp32 whatever the model's dtype:
PyTorch's CPU grid_sample in bf16 returns garbage for these strided value maps (NaN and 1e21 from values
below 5 with torch 2.15; tests/test_gdino_model.py), and the original CUDA kernel samples in fp32 too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_levels(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(batch, queries, heads x channels): per query and head, the weighted sum of bilinear samples.

    value: (batch, sum of h x w, heads, channels); locations: (batch, queries, heads, levels, points, 2)
    in [0, 1]; weights: (batch, queries, heads, levels, points).
    """
    batch, _, heads, channels = value.shape
    _, queries, _, _, points, _ = locations.shape
    grids = 2 * locations.float() - 1
    weights = weights.float().transpose(1, 2).reshape(batch * heads, 1, queries, -1, points)
    out = None
    for level, level_value in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        height, width = shapes[level]
        maps = level_value.float().flatten(2).transpose(1, 2).reshape(batch * heads, channels, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (batch x heads, queries, points, 2)
        samples = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        summed = samples.mul_(weights[:, :, :, level]).sum(-1)  # (batch x heads, channels, queries)
        out = summed if out is None else out.add_(summed)
    return out.view(batch, heads * channels, queries).transpose(1, 2).contiguous().to(value.dtype)


def use_level_sampling(model: torch.nn.Module) -> None:
    """Replace every MultiScaleDeformableAttention's forward (on the instance) by `sample_levels`.

    Grounding DINO and MM-Grounding-DINO both name the module so; weights and their names are untouched.
    """
    for module in model.modules():
        if type(module).__name__ == "MultiScaleDeformableAttention":
            module.forward = _forward


def _forward(value, spatial_shapes, spatial_shapes_list, level_start_index, locations, weights, im2col_step=None):
    """transformers' MultiScaleDeformableAttention.forward signature."""
    return sample_levels(value, spatial_shapes_list, locations, weights)
