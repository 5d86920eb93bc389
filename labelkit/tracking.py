"""Send a picture to whichever experiment trackers are configured (TensorBoard, W&B, CSV folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from labelkit.visualize import save_rgb


def log_image(loggers: list[Logger], tag: str, image: np.ndarray, step: int) -> None:
    """Log an H x W x 3 uint8 image; CSV runs get a PNG beside their metrics file."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=step)
        elif isinstance(logger, CSVLogger):
            folder = Path(logger.log_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            save_rgb(folder / f"{tag.replace('/', '_')}_step{step:07d}.png", image)
