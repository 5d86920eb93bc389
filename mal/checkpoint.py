"""Read weights safely and load them into a MaskNet, whatever layout they were saved in.

Layouts:
- "mal": our own Lightning checkpoints (`student.backbone.*`, `student.decoder.*`, `teacher.*`).
- "mal-original": the original MAL Lightning checkpoints and TAO 5 / TAO 6 `.pth` files
  (`student.backbone.*`, `student.roi_head.mlp{1,2}.*`, `student.mask_head.convs.N.conv.*`, and the same
  under `teacher.*`); the backbone has MAL's conv stem (`patch_embed.proj.{0..3}.{0,1}.*`,
  `patch_embed.proj.4.*`, original and TAO 5) or timm's patch projection (TAO 6).
- "backbone": a timm / MAE ViT state dict (classifier and MAE-decoder keys are ignored).
Every file is read with `weights_only=True` (or as safetensors), so loading never runs pickled code.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from auto_label.weights import load_weights

# Keys of classifier or MAE-decoder heads that a backbone state dict may carry and we do not use.
IGNORED_BACKBONE_PREFIXES = ("head.", "fc_norm.", "decoder", "mask_token")
# Original MAL / TAO decoder names -> ours (mal/decoder.py: key_mlp = Linear, ReLU, Linear).
ORIGINAL_DECODER_NAMES = (
    (re.compile(r"^roi_head\.mlp1\."), "decoder.key_mlp.0."),
    (re.compile(r"^roi_head\.mlp2\."), "decoder.key_mlp.2."),
    (re.compile(r"^mask_head\.convs\.(\d+)\.conv\."), r"decoder.value_convs.\1.0."),
)
CONV_STEM_KEY = "backbone.patch_embed.proj.0.0.weight"


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says which file and why."""


def _load_tensors(path: Path):
    """The file's object, tensors and plain containers only; a `.safetensors` twin is preferred."""
    return load_weights(path, CheckpointError)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, Lightning hyper_parameters or None) of a checkpoint, unwrapped from state_dict/model."""
    path = Path(path)
    obj = _load_tensors(path)
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if all(k.startswith("model.") for k in state):  # saved from a wrapper holding the MAL module as `model`
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return state, hparams if isinstance(hparams, dict) else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def mask_net_state(state: dict[str, torch.Tensor], branch: str = "student") -> tuple[dict[str, torch.Tensor], str]:
    """Our MaskNet names for one branch (student or teacher) of a MAL checkpoint; returns (state, layout)."""
    prefix = f"{branch}."
    sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not any(k.startswith(("roi_head.", "mask_head.")) for k in sub):
        return sub, "mal"
    renamed = {}
    for key, value in sub.items():
        for pattern, replacement in ORIGINAL_DECODER_NAMES:
            key, hits = pattern.subn(replacement, key)
            if hits:
                break
        renamed[key] = value
    return renamed, "mal-original"


def describe_checkpoint(path: str | Path) -> dict:
    """Layout and the architecture facts its tensors imply (conv stem, decoder sizes), plus our hparams."""
    state, hparams = read_checkpoint(path)
    if not any(k.startswith("student.") for k in state):
        return {"layout": "backbone", "conv_stem": any(k.endswith("patch_embed.proj.0.0.weight") for k in state)}
    net_state, layout = mask_net_state(state)
    convs = sorted({int(m.group(1)) for k in net_state if (m := re.match(r"decoder\.value_convs\.(\d+)\.", k))})
    info = {
        "layout": layout,
        "has_teacher": any(k.startswith("teacher.") for k in state),
        "conv_stem": CONV_STEM_KEY in net_state,
        "mask_head_num_convs": len(convs),
        "mask_head_hidden_channel": net_state["decoder.key_mlp.0.weight"].shape[0],
        "mask_head_out_channel": net_state["decoder.key_mlp.2.weight"].shape[0],
    }
    if layout == "mal" and hparams is not None:
        info["hparams"] = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return info


def fit_pos_embed(state: dict[str, torch.Tensor], vit: nn.Module, prefix: str = "") -> None:
    """Interpolate a checkpoint's position embeddings to the model's token grid, in place."""
    key = prefix + "pos_embed"
    if key in state and state[key].shape != vit.pos_embed.shape:
        grid = vit.patch_embed.grid_size
        state[key] = resample_abs_pos_embed(state[key], new_size=list(grid), num_prefix_tokens=vit.num_prefix_tokens)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:

        def show(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        raise CheckpointError(
            f"{path}: does not match the model: "
            + "; ".join(
                f"{name} keys: {show(items)}"
                for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", sorted(wrong)))
                if items
            )
        )
    module.load_state_dict(state, strict=True)


def load_pretrained(net: nn.Module, path: str | Path, branch: str = "student") -> str:
    """Load `path` into a MaskNet, strictly; returns the layout found ("mal", "mal-original", "backbone").

    `branch` picks the student or the EMA teacher of a MAL checkpoint.
    """
    path = Path(path)
    state, _ = read_checkpoint(path)
    if any(k.startswith("student.") for k in state):
        if not any(k.startswith(f"{branch}.") for k in state):
            raise CheckpointError(f"{path}: a MAL checkpoint without {branch} weights")
        state, layout = mask_net_state(state, branch)
        fit_pos_embed(state, net.backbone, "backbone.")
        _load_strict(net, state, path)
        return layout
    if branch != "student":
        raise CheckpointError(f"{path}: a backbone-only checkpoint has no {branch} weights")
    for prefix in ("backbone.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_BACKBONE_PREFIXES)}
    fit_pos_embed(state, net.backbone)
    _load_strict(net.backbone, state, path)
    return "backbone"
