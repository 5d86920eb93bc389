"""Read weights safely and load them into a MaskNet: a MAL checkpoint, or a timm/MAE backbone."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from torch import nn

# Keys of classifier or MAE-decoder heads that a backbone state dict may carry and we do not use.
IGNORED_BACKBONE_PREFIXES = ("head.", "fc_norm.", "decoder", "mask_token")


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says which file and why."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors without running pickled code; a `.safetensors` twin is preferred when present."""
    path = Path(path)
    twin = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors" and twin.is_file():
        path = twin
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than weights "
            f"(loading it could run code). Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {e}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


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


def load_pretrained(net: nn.Module, path: str | Path) -> str:
    """Load `path` into a MaskNet; returns which layout was found ("mal" or "backbone")."""
    path = Path(path)
    state = read_state_dict(path)
    if any(k.startswith("student.") for k in state):
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        fit_pos_embed(state, net.backbone, "backbone.")
        _load_strict(net, state, path)
        return "mal"
    for prefix in ("backbone.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_BACKBONE_PREFIXES)}
    fit_pos_embed(state, net.backbone)
    _load_strict(net.backbone, state, path)
    return "backbone"
