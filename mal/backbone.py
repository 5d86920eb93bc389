"""The image encoder, chosen by timm name, returning a 2-D feature map: a Vision Transformer (MAL's, and the
only kind released MAL weights use) or any timm convolutional network cut at one stride (`ConvFeatures`).

Two details follow the original MAL code, so that its released weights give its features:
- Optionally the 16x16 patch projection is replaced by MAL's convolutional stem (four stride-2 3x3
  convolutions with GroupNorm(1, eps 1e-6) and GELU, the 1x1 projection appended inside the last stage),
  with the original's state-dict names `patch_embed.proj.{0..3}.{0,1}`, `patch_embed.proj.3.3`.
- The position embedding keeps whatever grid its weights were trained at (14 x 14 for a 224-pixel
  pretraining) and is interpolated to the crop's token grid at every forward, as DINO / MAE / MAL do.
"""

from __future__ import annotations

import math
import types

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, use_fused_attn
from torch import nn

from labelkit.precision import cpu_has_native_bf16

# TAO spec names -> timm names
ARCH_ALIASES = {
    "vit-mae-base/16": "vit_base_patch16_224",
    "vit-mae-large/16": "vit_large_patch16_224",
    "vit-mae-huge/14": "vit_huge_patch14_224",
    "vit-deit-tiny/16": "vit_tiny_patch16_224",
    "vit-deit-small/16": "vit_small_patch16_224",
}


CONV_STEM_GROUPNORM_EPS = 1e-6  # the original MAL ConvStem's GroupNorm (REFERENCE.md 2a; measured)


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with the projection replaced by a 4-stage stride-2 conv stem (patch size 16).

    Stage k is `Sequential(conv3x3 s2, GroupNorm(1), GELU)`; the 1x1 projection is a fourth module of
    the last stage, which gives the original MAL / TAO 5 names `proj.{0..3}.{0,1}` and `proj.3.3`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.patch_size != (16, 16):
            raise ValueError(f"the conv stem downsamples by 16; patch size {self.patch_size} is not supported")
        embed_dim = self.proj.out_channels
        in_chans = self.proj.in_channels
        widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        stages = []
        for width in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                    nn.GroupNorm(1, width, eps=CONV_STEM_GROUPNORM_EPS),
                    nn.GELU(),
                )
            )
            in_chans = width
        stages[-1].append(nn.Conv2d(embed_dim, embed_dim, 1))
        self.proj = nn.Sequential(*stages)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Resample a 1 x (prefix + n*n) x C position embedding to an h x w token grid, as DINO's
    `interpolate_pos_encoding` does (and MAL, which uses it, at every forward): bicubic with
    `scale_factor = (h + 0.1) / n` (the 0.1 avoids a floating-point rounding to h - 1), so the sampling
    positions follow that factor, not h / n. An embedding already at the grid is returned as it is.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    height, width = grid
    if side * side != patches.shape[1]:
        raise ValueError(f"position embedding of {patches.shape[1]} patch tokens is not a square grid")
    if (side, side) == (height, width):
        return pos_embed
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((height + 0.1) / side, (width + 0.1) / side), mode="bicubic")
    patches = patches.permute(0, 2, 3, 1).reshape(1, height * width, -1)
    return torch.cat([prefix, patches.to(prefix.dtype)], dim=1)


def _pos_embed_per_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm's `VisionTransformer._pos_embed` (class token concatenated, then the embedding added) with the
    embedding interpolated to the token grid of this forward (`interpolate_pos_embed`)."""
    prefix = [self.cls_token.expand(x.shape[0], -1, -1)] if self.cls_token is not None else []
    if self.reg_token is not None:
        prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
    x = torch.cat([*prefix, x], dim=1)
    return self.pos_drop(x + interpolate_pos_embed(self.pos_embed, self.patch_embed.grid_size, self.num_prefix_tokens))


def create_vit(
    arch: str, crop_size: int, conv_stem: bool = False, drop_path_rate: float = 0.0, **model_kwargs
) -> nn.Module:
    """Build a randomly initialised timm ViT for `crop_size` x `crop_size` inputs, with no classifier."""
    name = ARCH_ALIASES.get(arch, arch)
    if conv_stem:
        model_kwargs["embed_layer"] = ConvStemPatchEmbed
    try:
        model = timm.create_model(
            name, pretrained=False, num_classes=0, img_size=crop_size, drop_path_rate=drop_path_rate, **model_kwargs
        )
    except RuntimeError as e:
        raise ValueError(f"unknown backbone arch {arch!r}: {e}") from None
    patch = model.patch_embed.patch_size[0]
    if crop_size % patch:
        raise ValueError(f"crop_size {crop_size} is not divisible by the patch size {patch} of {arch!r}")
    if model.pos_embed is None or getattr(model, "no_embed_class", False) or model.dynamic_img_size:
        raise ValueError(f"backbone {arch!r}: MAL needs a ViT with a learnt position embedding over class + patches")
    model._pos_embed = types.MethodType(_pos_embed_per_forward, model)  # on the instance: same state-dict names
    return model


class ConvFeatures(nn.Module):
    """A timm network built `features_only` and cut at the feature level of `stride` (8, 16, 32 where the
    network has it), as MAL's encoder: B x 3 x S x S images -> B x `embed_dim` x S/stride x S/stride."""

    def __init__(self, name: str, crop_size: int, stride: int = 16, drop_path_rate: float = 0.0, **model_kwargs):
        super().__init__()
        try:
            with torch.device("meta"):
                levels = timm.create_model(name, features_only=True, **model_kwargs).feature_info.reduction()
        except RuntimeError as e:
            raise ValueError(f"unknown backbone arch {name!r}: {e}") from None
        if stride not in levels:
            raise ValueError(f"backbone {name!r} has feature maps at strides {levels}, not at {stride}")
        if crop_size % stride:
            raise ValueError(f"crop_size {crop_size} is not divisible by the feature stride {stride} of {name!r}")
        if drop_path_rate:
            model_kwargs["drop_path_rate"] = drop_path_rate
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=(levels.index(stride),), **model_kwargs
        )
        self.embed_dim = self.body.feature_info.channels()[0]
        self.grid_size = (crop_size // stride, crop_size // stride)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[0]


def is_vit(arch: str) -> bool:
    """Whether the timm name (or TAO alias) `arch` is a VisionTransformer (else a `ConvFeatures` backbone)."""
    name = ARCH_ALIASES.get(arch, arch)
    return timm.is_model(name) and timm.models.model_entrypoint(name).__module__.endswith(".vision_transformer")


def create_backbone(
    arch: str,
    crop_size: int,
    conv_stem: bool = False,
    drop_path_rate: float = 0.0,
    feature_stride: int = 16,
    **model_kwargs,
) -> nn.Module:
    """A randomly initialised encoder by timm name: `create_vit` for a ViT, else `ConvFeatures` at
    `feature_stride` (a ViT's stride is its patch size)."""
    if is_vit(arch) or not timm.is_model(arch):
        return create_vit(arch, crop_size, conv_stem, drop_path_rate, **model_kwargs)
    if conv_stem:
        raise ValueError(f"conv_stem replaces a ViT's patch projection; {arch!r} is not a ViT")
    return ConvFeatures(arch, crop_size, feature_stride, drop_path_rate, **model_kwargs)


def feature_grid(backbone: nn.Module) -> int:
    """Side of the encoder's feature map for a crop of the size it was built for."""
    return backbone.grid_size[0] if isinstance(backbone, ConvFeatures) else backbone.patch_embed.grid_size[0]


def adopt_pos_embed(vit: nn.Module, pos_embed: torch.Tensor) -> None:
    """Give `vit` a position-embedding parameter of `pos_embed`'s shape (its grid is read from the weights;
    it is interpolated at every forward), so that loading keeps the weights' own grid."""
    if vit.pos_embed.shape != pos_embed.shape:
        vit.pos_embed = nn.Parameter(
            vit.pos_embed.new_zeros(pos_embed.shape), requires_grad=vit.pos_embed.requires_grad
        )


def cpu_bf16_autocast(images: torch.Tensor) -> bool:
    return (
        images.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def select_attention_kernel(vit: nn.Module, images: torch.Tensor) -> None:
    """Under bf16 autocast on a CPU with native bf16 (labelkit.precision), PyTorch's fused (flash) attention
    kernel is no faster than in fp32, while plain bf16 matmuls + softmax run ViT attention at crop-size token
    counts 1.7x faster (BENCHMARKS.md). Use timm's unfused path there for inference only (Lightning predicts,
    validates and tests in inference mode): its softmax is rounded to bf16, and training with it learnt worse
    (demo: 0.601 instead of 0.636 mIoU). Everywhere else the fused kernel (training, fp32, any GPU, a CPU
    that emulates bf16)."""
    unfused = torch.is_inference_mode_enabled() and cpu_bf16_autocast(images) and cpu_has_native_bf16()
    fused = use_fused_attn() and not unfused
    for module in vit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


def feature_map(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Encode B x 3 x S x S images to a B x C x S/p x S/p map (a ViT's class and register tokens dropped)."""
    if isinstance(vit, ConvFeatures):
        return vit.forward_features(images)
    select_attention_kernel(vit, images)
    tokens = vit.forward_features(images)[:, vit.num_prefix_tokens :]
    side = images.shape[-1] // vit.patch_embed.patch_size[0]
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def compile_for_inference(vit: nn.Module) -> None:
    """`torch.compile` `vit.forward_features` on this instance, once, for prediction: frozen weights (Inductor
    folds and prepacks them) for speed, and a dynamic batch size so that every number of crops reuses one
    compilation. torch.compile specialises on a size of 1, so a single crop runs as a batch of two."""
    if "forward_features" in vit.__dict__:
        return
    compiled = torch.compile(vit.forward_features, dynamic=True, options={"freezing": True})

    def forward_features(images: torch.Tensor) -> torch.Tensor:
        return compiled(images.repeat(2, 1, 1, 1))[:1] if len(images) == 1 else compiled(images)

    vit.forward_features = forward_features  # on the instance: weights and state-dict names unchanged
