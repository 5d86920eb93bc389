"""Read weight files without ever running pickled code.

A `.pth` / `.ckpt` file is a pickle, and unpickling can run any code the file's author chose.
Everything here goes through `torch.load(weights_only=True)` (tensors, numbers, strings and plain
containers only) or safetensors, and a `.safetensors` file beside a pickle of the same name is read
instead of it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class WeightsError(ValueError):
    """A weights file that cannot or must not be read; the message says which file and why."""


def preferred_file(path: str | Path) -> Path:
    """`path`, or its `.safetensors` twin when one exists (no pickle is read when it can be avoided)."""
    path = Path(path)
    twin = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors" and twin.is_file():
        return twin
    return path


def load_weights(path: str | Path, error: type[ValueError] = WeightsError, prefer_safetensors: bool = True):
    """The file's object (tensors and plain containers only); `error` is raised with a clear message."""
    path = preferred_file(path) if prefer_safetensors else Path(path)
    if not path.is_file():
        raise error(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise error(f"{path}: not a readable safetensors file: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise error(
            f"{path}: refused to load: the file holds pickled objects other than weights "
            f"(loading it could run code). Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable PyTorch checkpoint: {e}") from None
