"""Weights & Biases works from the config alone, offline (WANDB_MODE=offline), with overlay images."""

import pytest
from conftest import TINY_MAL_ARGS

from mal.__main__ import cli_main


def test_wandb_logger_offline(synthetic, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = (
        '--trainer.logger=[{"class_path": "lightning.pytorch.loggers.WandbLogger", '
        f'"init_args": {{"project": "auto-label-test", "save_dir": "{tmp_path}"}}}}]'
    )
    data = [
        *("--data.train_ann_path", str(synthetic["train"]), "--data.train_img_dir", str(synthetic["images"])),
        *("--data.val_ann_path", str(synthetic["val"]), "--data.val_img_dir", str(synthetic["images"])),
    ]
    cli_main(
        ["fit", *TINY_MAL_ARGS, *data, logger, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps", "2"]
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = list(runs[0].rglob("*.png")) + list(runs[0].rglob("run-*.wandb"))
    assert logged, "the offline run recorded nothing"
