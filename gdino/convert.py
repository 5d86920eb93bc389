"""Original IDEA Grounding DINO checkpoints (.pth) -> Hugging Face transformers state dict.

Mapping rules are written once as (IDEA pattern, HF pattern) pairs where "{}" stands for one key
component (a layer index, weight/bias), so the table reads both ways. Fused projections (Swin `qkv`,
nn.MultiheadAttention `in_proj_*`) split into the separate q/k/v tensors that transformers 5.x uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gdino.errors import GDinoError
from labelkit.weights import load_weights

SWIN = "model.backbone.conv_encoder.model."
BLOCK = "backbone.0.layers.{}.blocks.{}."
HF_BLOCK = SWIN + "swin.encoder.layers.{}.blocks.{}."
ENC, HF_ENC = "transformer.encoder.", "model.encoder.layers.{}."
DEC, HF_DEC = "transformer.decoder.layers.{}.", "model.decoder.layers.{}."

# (IDEA prefix, HF prefix); the first matching rule wins, so specific rules come first.
RENAMES: list[tuple[str, str]] = [
    ("backbone.0.patch_embed.proj.", SWIN + "swin.embeddings.patch_embeddings.projection."),
    ("backbone.0.patch_embed.norm.", SWIN + "swin.embeddings.norm."),
    (BLOCK + "norm1.", HF_BLOCK + "layernorm_before."),
    (BLOCK + "norm2.", HF_BLOCK + "layernorm_after."),
    (BLOCK + "attn.proj.", HF_BLOCK + "attention.o_proj."),
    (
        BLOCK + "attn.relative_position_bias_table",
        HF_BLOCK + "attention.relative_position_bias.relative_position_bias_table",
    ),
    (BLOCK + "mlp.", HF_BLOCK + "mlp."),
    ("backbone.0.layers.{}.downsample.", SWIN + "swin.encoder.layers.{}.downsample."),
    # IDEA numbers the output norms by stage index 0..3, transformers by stage name 1..4
    *[(f"backbone.0.norm{i}.", SWIN + f"hidden_states_norms.stage{i + 1}.") for i in range(4)],
    (ENC + "layers.{}.self_attn.", HF_ENC + "deformable_layer.self_attn."),
    (ENC + "layers.{}.norm1.", HF_ENC + "deformable_layer.self_attn_layer_norm."),
    (ENC + "layers.{}.linear1.", HF_ENC + "deformable_layer.fc1."),
    (ENC + "layers.{}.linear2.", HF_ENC + "deformable_layer.fc2."),
    (ENC + "layers.{}.norm2.", HF_ENC + "deformable_layer.final_layer_norm."),
    (ENC + "text_layers.{}.self_attn.out_proj.", HF_ENC + "text_enhancer_layer.self_attn.out_proj."),
    (ENC + "text_layers.{}.linear1.", HF_ENC + "text_enhancer_layer.fc1."),
    (ENC + "text_layers.{}.linear2.", HF_ENC + "text_enhancer_layer.fc2."),
    (ENC + "text_layers.{}.norm1.", HF_ENC + "text_enhancer_layer.layer_norm_before."),
    (ENC + "text_layers.{}.norm2.", HF_ENC + "text_enhancer_layer.layer_norm_after."),
    (ENC + "fusion_layers.{}.gamma_v", HF_ENC + "fusion_layer.vision_param"),
    (ENC + "fusion_layers.{}.gamma_l", HF_ENC + "fusion_layer.text_param"),
    (ENC + "fusion_layers.{}.layer_norm_v.", HF_ENC + "fusion_layer.layer_norm_vision."),
    (ENC + "fusion_layers.{}.layer_norm_l.", HF_ENC + "fusion_layer.layer_norm_text."),
    *[
        (ENC + f"fusion_layers.{{}}.attn.{src}.", HF_ENC + f"fusion_layer.attn.{dst}.")
        for src, dst in [
            ("v_proj", "vision_proj"),
            ("l_proj", "text_proj"),
            ("values_v_proj", "values_vision_proj"),
            ("values_l_proj", "values_text_proj"),
            ("out_v_proj", "out_vision_proj"),
            ("out_l_proj", "out_text_proj"),
        ]
    ],
    (DEC + "cross_attn.", HF_DEC + "encoder_attn."),
    (DEC + "norm1.", HF_DEC + "encoder_attn_layer_norm."),
    (DEC + "ca_text.out_proj.", HF_DEC + "encoder_attn_text.out_proj."),
    (DEC + "catext_norm.", HF_DEC + "encoder_attn_text_layer_norm."),
    (DEC + "self_attn.out_proj.", HF_DEC + "self_attn.out_proj."),
    (DEC + "norm2.", HF_DEC + "self_attn_layer_norm."),
    (DEC + "linear1.", HF_DEC + "fc1."),
    (DEC + "linear2.", HF_DEC + "fc2."),
    (DEC + "norm3.", HF_DEC + "final_layer_norm."),
    ("transformer.decoder.norm.", "model.decoder.layer_norm."),
    ("transformer.decoder.ref_point_head.", "model.decoder.reference_points_head."),
    ("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."),
    ("transformer.enc_output.", "model.enc_output."),
    ("transformer.enc_output_norm.", "model.enc_output_norm."),
    ("transformer.enc_out_bbox_embed.", "model.encoder_output_bbox_embed."),
    ("transformer.level_embed", "model.level_embed"),
    ("transformer.tgt_embed.", "model.query_position_embeddings."),
    ("bert.", "model.text_backbone."),
    ("feat_map.", "model.text_projection."),
    ("input_proj.", "model.input_proj_vision."),
    ("bbox_embed.", "bbox_embed."),
]

# IDEA key (full match) -> the HF keys of its equal-sized parts along dim 0, in q, k, v order.
_MHA = [
    (ENC + "text_layers.{}.self_attn.", HF_ENC + "text_enhancer_layer.self_attn."),
    (DEC + "ca_text.", HF_DEC + "encoder_attn_text."),
    (DEC + "self_attn.", HF_DEC + "self_attn."),
]
SPLITS: list[tuple[str, list[str]]] = [
    (BLOCK + "attn.qkv.{}", [HF_BLOCK + f"attention.{p}_proj.{{}}" for p in "qkv"]),
    *[
        (src + f"in_proj_{kind}", [dst + f"{p}.{kind}" for p in ("query", "key", "value")])
        for src, dst in _MHA
        for kind in ("weight", "bias")
    ],
]

# Buffers and heads that transformers recomputes or does not have.
IGNORED = re.compile(r"(relative_position_index|position_ids)$|^bert\.pooler\.")


def pattern_regex(pattern: str, full: bool = False) -> re.Pattern:
    """A rule pattern as a regex anchored at the start (and the end when `full`)."""
    body = re.escape(pattern).replace(r"\{\}", r"([^.]+)")
    return re.compile(f"^{body}$" if full else f"^{body}")


def fill_pattern(pattern: str, groups) -> str:
    return pattern.replace("{}", "%s") % tuple(groups)


_RENAME_RULES = [(pattern_regex(idea), hf) for idea, hf in RENAMES]
_SPLIT_RULES = [(pattern_regex(idea, full=True), hfs) for idea, hfs in SPLITS]


def strip_wrappers(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The tensors of a training checkpoint: under `model` (or `state_dict`), without `module.`."""
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def convert_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename IDEA keys to transformers keys; return (converted, ignored keys). Unknown keys are an error."""
    out, ignored, unmapped = {}, [], []
    for key, value in state.items():
        if IGNORED.search(key):
            ignored.append(key)
            continue
        for regex, targets in _SPLIT_RULES:
            match = regex.match(key)
            if match:
                for target, part in zip(targets, value.chunk(len(targets), dim=0)):
                    out[fill_pattern(target, match.groups())] = part.clone()
                break
        else:
            for regex, target in _RENAME_RULES:
                match = regex.match(key)
                if match:
                    out[fill_pattern(target, match.groups()) + key[match.end() :]] = value
                    break
            else:
                unmapped.append(key)
    if unmapped:
        raise GDinoError(key_listing("checkpoint keys with no known mapping (not an IDEA Grounding DINO?)", unmapped))
    return out, ignored


def load_idea_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original .pth safely (tensors only, no pickled code; a .safetensors twin first) and convert it."""
    checkpoint = load_weights(path, GDinoError)
    if not isinstance(checkpoint, dict):
        raise GDinoError(f"{path}: expected a dict of tensors, got {type(checkpoint).__name__}")
    converted, _ = convert_state_dict(strip_wrappers(checkpoint))
    return converted


def key_listing(title: str, keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}):\n  " + "\n  ".join(keys[:limit]) + more
