"""The image encoder: a timm Vision Transformer chosen by name, returning a 2-D feature map.

Optionally the 16x16 patch projection is replaced by MAL's convolutional stem (four stride-2 3x3
convolutions, then a 1x1 projection), which keeps the state-dict layout `patch_embed.proj.{0..4}`.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import PatchEmbed, use_fused_attn
from torch import nn

# TAO spec names -> timm names
ARCH_ALIASES = {
    "vit-mae-base/16": "vit_base_patch16_224",
    "vit-mae-large/16": "vit_large_patch16_224",
    "vit-mae-huge/14": "vit_huge_patch14_224",
    "vit-deit-tiny/16": "vit_tiny_patch16_224",
    "vit-deit-small/16": "vit_small_patch16_224",
}


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with the projection replaced by a 4-stage stride-2 conv stem (patch size 16)."""

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
                    nn.GroupNorm(1, width),
                    nn.GELU(),
                )
            )
            in_chans = width
        self.proj = nn.Sequential(*stages, nn.Conv2d(embed_dim, embed_dim, 1))


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
    return model


def cpu_bf16_autocast(images: torch.Tensor) -> bool:
    return (
        images.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def select_attention_kernel(vit: nn.Module, images: torch.Tensor) -> None:
    """Under bf16 autocast on a CPU, PyTorch's fused (flash) attention kernel is no faster than in fp32, while
    plain bf16 matmuls + softmax run ViT attention at crop-size token counts 1.7x faster (BENCHMARKS.md).
    Use timm's unfused path there for inference only (Lightning predicts, validates and tests in inference
    mode): its softmax is rounded to bf16, and training with it learnt worse (demo: 0.601 instead of 0.636
    mIoU). Everywhere else the fused kernel (training, fp32 on a CPU, any GPU)."""
    fused = use_fused_attn() and not (torch.is_inference_mode_enabled() and cpu_bf16_autocast(images))
    for module in vit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


def feature_map(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Encode B x 3 x S x S images to a B x C x S/p x S/p map (class and register tokens dropped)."""
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
