"""Read weights safely and load them into a MaskNet, whatever layout they were saved in.

Layouts:
- "mal": our own Lightning checkpoints (`student.backbone.*`, `student.decoder.*`, `teacher.*`).
- "mal-original": the original MAL Lightning checkpoints and TAO 5 / TAO 6 `.pth` files
  (`student.backbone.*`, `student.roi_head.mlp{1,2}.*`, `student.mask_head.convs.N.conv.*`, and the same
  under `teacher.*`); the backbone has MAL's conv stem (`patch_embed.proj.{0..3}.{0,1}.*` and the 1x1
  projection `patch_embed.proj.3.3.*`, original and TAO 5) or timm's patch projection (TAO 6).
- "backbone": a timm / MAE ViT state dict (classifier and MAE-decoder keys are ignored).
Our checkpoints from before the conv stem took the original's names hold `patch_embed.proj.4.*`; it is
read as `proj.3.3.*`. The position embedding keeps the checkpoint's grid (it is interpolated at every
forward, mal.backbone), and the rest of the architecture is read from the tensors (`architecture`).
Every file is read with `weights_only=True` (or as safetensors), so loading never runs pickled code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from labelkit.weights import load_weights
from mal.backbone import adopt_pos_embed, create_vit

log = logging.getLogger(__name__)

# Keys of classifier or MAE-decoder heads that a backbone state dict may carry and we do not use.
IGNORED_BACKBONE_PREFIXES = ("head.", "fc_norm.", "decoder", "mask_token")
# Original MAL / TAO decoder names -> ours (mal/decoder.py: key_mlp = Linear, ReLU, Linear).
ORIGINAL_DECODER_NAMES = (
    (re.compile(r"^roi_head\.mlp1\."), "decoder.key_mlp.0."),
    (re.compile(r"^roi_head\.mlp2\."), "decoder.key_mlp.2."),
    (re.compile(r"^mask_head\.convs\.(\d+)\.conv\."), r"decoder.value_convs.\1.0."),
)
LEGACY_STEM_PROJECTION = re.compile(r"^backbone\.patch_embed\.proj\.4\.")
CONV_STEM_KEY = "backbone.patch_embed.proj.0.0.weight"
BRANCHES = ("student", "teacher")
# Attention heads of the standard ViT widths (DeiT-T/S, ViT-B/L/H); other widths: 64 channels a head.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says which file and why."""


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, Lightning hyper_parameters or None) of a checkpoint, unwrapped from state_dict/model."""
    path = Path(path)
    obj = load_weights(path, CheckpointError)
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    return unwrap_state(obj, path), hparams if isinstance(hparams, dict) else None


def unwrap_state(obj, path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (under state_dict / model / module, `module.` prefixes off)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if all(k.startswith("model.") for k in state):  # saved from a wrapper holding the MAL module as `model`
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return state


def is_mal_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("student.") for k in state)


def _our_name(key: str) -> str:
    """A MaskNet key of any MAL layout -> ours."""
    key = LEGACY_STEM_PROJECTION.sub("backbone.patch_embed.proj.3.3.", key)
    for pattern, replacement in ORIGINAL_DECODER_NAMES:
        key, hits = pattern.subn(replacement, key)
        if hits:
            break
    return key


def mask_net_state(state: dict[str, torch.Tensor], branch: str = "student") -> tuple[dict[str, torch.Tensor], str]:
    """Our MaskNet names for one branch (student or teacher) of a MAL checkpoint; returns (state, layout)."""
    prefix = f"{branch}."
    sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    layout = "mal-original" if any(k.startswith(("roi_head.", "mask_head.")) for k in sub) else "mal"
    return {_our_name(k): v for k, v in sub.items()}, layout


def module_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MAL checkpoint's student and teacher in MALModule names (what Lightning's `--ckpt_path` loads)."""
    return {f"{b}.{k}": v for b in BRANCHES for k, v in mask_net_state(state, b)[0].items()}


def _vit_facts(net_state: dict[str, torch.Tensor]) -> dict:
    """timm ViT arguments implied by a MaskNet state's backbone tensors (all but the number of heads)."""
    width = net_state["backbone.cls_token"].shape[-1]
    depth = len({m.group(1) for k in net_state if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))})
    facts = {
        "embed_dim": width,
        "depth": depth,
        "mlp_ratio": net_state["backbone.blocks.0.mlp.fc1.weight"].shape[0] / width,
    }
    if "backbone.patch_embed.proj.weight" in net_state:
        facts["patch_size"] = net_state["backbone.patch_embed.proj.weight"].shape[-1]
    return facts


def architecture(net_state: dict[str, torch.Tensor]) -> dict:
    """MALModule arguments that a MaskNet state's tensors fix: the ViT's size (`backbone_kwargs`; none for a
    convolutional backbone, whose name and size only our checkpoints' hyperparameters hold), the conv stem and
    the decoder's sizes."""
    convs = sorted({int(m.group(1)) for k in net_state if (m := re.match(r"decoder\.value_convs\.(\d+)\.", k))})
    return {
        "backbone_kwargs": _vit_facts(net_state) if "backbone.cls_token" in net_state else None,
        "conv_stem": CONV_STEM_KEY in net_state,
        "mask_head_num_convs": len(convs),
        "mask_head_hidden_channel": net_state["decoder.key_mlp.0.weight"].shape[0],
        "mask_head_out_channel": net_state["decoder.key_mlp.2.weight"].shape[0],
    }


def configured_width(arch: str, backbone_kwargs: dict) -> int:
    """The embedding width of the ViT that `arch` and `backbone_kwargs` name (built on the meta device)."""
    with torch.device("meta"):
        return create_vit(arch, 224, **{k: v for k, v in backbone_kwargs.items() if k != "depth"}, depth=1).embed_dim


def describe_checkpoint(path: str | Path) -> dict:
    """Layout, teacher presence and the architecture its tensors imply (`architecture`), plus our hparams."""
    state, hparams = read_checkpoint(path)
    if not is_mal_checkpoint(state):
        return {"layout": "backbone", "conv_stem": any(k.endswith("patch_embed.proj.0.0.weight") for k in state)}
    net_state, layout = mask_net_state(state)
    try:
        info = {
            "layout": layout,
            "has_teacher": any(k.startswith("teacher.") for k in state),
            **architecture(net_state),
        }
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: a MAL checkpoint without the tensor {e}") from None
    if layout == "mal" and hparams is not None:
        info["hparams"] = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return info


def with_architecture(model_args: dict, path: str | Path, info: dict | None = None) -> dict:
    """`model_args` (MALModule arguments) with the architecture of the MAL checkpoint at `path` put in; logs
    what the checkpoint changed. Backbone-only weights leave them as they are. `info`: the checkpoint's
    `describe_checkpoint`, when the caller has it already."""
    info = info or describe_checkpoint(path)
    if info["layout"] == "backbone":
        return model_args
    facts = {k: info[k] for k in ("conv_stem", "mask_head_num_convs", "mask_head_hidden_channel")}
    facts["mask_head_out_channel"] = info["mask_head_out_channel"]
    if info["backbone_kwargs"] is None:  # not a ViT: only our own hyperparameters name the network
        if "hparams" not in info:
            raise CheckpointError(f"{path}: a MAL checkpoint without a ViT backbone and without hyperparameters")
        facts.update({k: info["hparams"][k] for k in ("arch", "backbone_kwargs", "feature_stride")})
        return _changed(model_args, facts, path)
    configured = model_args.get("backbone_kwargs") or {}
    vit = {**configured, **info["backbone_kwargs"]}
    if configured_width(model_args.get("arch", "vit_base_patch16_224"), configured) != vit["embed_dim"]:
        width = vit["embed_dim"]  # the tensors cannot tell the heads: those of the standard ViT of that width
        vit["num_heads"] = HEADS_BY_WIDTH.get(width, max(1, width // 64))
    facts["backbone_kwargs"] = vit
    return _changed(model_args, facts, path)


def _changed(model_args: dict, facts: dict, path: str | Path) -> dict:
    """`model_args` updated with `facts`, logging what changed."""
    changed = {k: v for k, v in facts.items() if model_args.get(k) != v}
    if changed:
        log.info("architecture read from %s: %s", path, changed)
    return {**model_args, **facts}


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """One line naming missing, unexpected and wrong-shape keys, or None when `state` fits `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )

    def show(items):
        return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

    parts = [
        f"{name} keys: {show(items)}"
        for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong))
        if items
    ]
    return "; ".join(parts) or None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Load `state` into `module`, keeping the state's position-embedding grid; any other mismatch is a
    CheckpointError naming the keys."""
    for name, vit in module.named_modules():
        key = f"{name}.pos_embed" if name else "pos_embed"
        if hasattr(vit, "patch_embed") and key in state:
            adopt_pos_embed(vit, state[key])
    problem = state_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: does not match the model: {problem}")
    module.load_state_dict(state, strict=True)


def load_pretrained(net: nn.Module, path: str | Path, branch: str = "student") -> str:
    """Load `path` into a MaskNet, strictly; returns the layout found ("mal", "mal-original", "backbone").

    `branch` picks the student or the EMA teacher of a MAL checkpoint.
    """
    path = Path(path)
    state, _ = read_checkpoint(path)
    if is_mal_checkpoint(state):
        if not any(k.startswith(f"{branch}.") for k in state):
            raise CheckpointError(f"{path}: a MAL checkpoint without {branch} weights")
        state, layout = mask_net_state(state, branch)
        load_strict(net, state, path)
        return layout
    if branch != "student":
        raise CheckpointError(f"{path}: a backbone-only checkpoint has no {branch} weights")
    for prefix in ("backbone.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_BACKBONE_PREFIXES)}
    load_strict(net.backbone, state, path)
    return "backbone"
