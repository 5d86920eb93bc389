"""Shared fixtures: a small synthetic COCO dataset, and the paths of ../shared when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from labelkit.synthetic import make_synthetic_coco

# The same precision on every machine CI may run on: `precision: auto` as on a CPU without native bf16 (the
# tests that exercise the decision set this variable themselves).
os.environ.setdefault("AUTO_LABEL_CPU_BF16", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO128 = SHARED / "data" / "coco128"

# A MAL small enough to train for a few steps in seconds on one CPU core.
TINY_MAL_ARGS = [
    "--model.arch",
    "vit_tiny_patch16_224",
    "--model.backbone_kwargs",
    "{patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
    "--model.mask_head_hidden_channel",
    "16",
    "--model.mask_head_out_channel",
    "16",
    "--model.loss_size",
    "32",
    "--model.crf_num_iter",
    "3",
    "--model.lr",
    "1e-4",
    "--data.crop_size",
    "32",
    "--data.batch_size",
    "8",
    "--data.eval_batch_size",
    "2",
    "--data.num_workers",
    "0",
    "--data.min_obj_size",
    "0",
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.log_every_n_steps",
    "1",
]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    train = make_synthetic_coco(root, num_images=6, height=96, width=128, max_objects=3, seed=0, name="train")
    val = make_synthetic_coco(root, num_images=3, height=96, width=128, max_objects=3, seed=1, name="val")
    return {"root": root, "train": train, "val": val, "images": root / "images"}


@pytest.fixture(scope="session")
def gdino_model_dir(tmp_path_factory) -> Path:
    """The tiny random Grounding DINO saved as a local Hugging Face directory (built once per session)."""
    from gdino_helpers import save_tiny_model_dir

    torch.set_num_threads(1)
    return save_tiny_model_dir(tmp_path_factory.mktemp("gdino_model") / "tiny")
