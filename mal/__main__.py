"""`python -m mal fit|validate|test|predict --config ...` (Lightning CLI), `python -m mal evaluate` and
`python -m mal selftrain` (the from-scratch recipe's fits and labelling rounds, `mal.self_training`).

One config serves every command (configs/mal/coco128_cpu.yaml). `predict` writes the labels where
`writer.label_dump_path` says and nothing else: the config's loggers, checkpoint and learning-rate
callbacks belong to training and are left out, so labelling with a training config makes no empty log
version folder (runs/...) in the working directory. `validate` and `test` keep the loggers: their metrics
are logged beside the training's, as Lightning does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from labelkit.cli import expand_flags
from labelkit.console import console_trainer_defaults, run_quietly
from labelkit.precision import accelerator_device, resolve_precision
from labelkit.weights import load_weights
from mal.checkpoint import CheckpointError, with_architecture
from mal.data import COCOBoxDataModule
from mal.evaluate import evaluate_files, print_table
from mal.module import PREDICTION_OPTIONS, MALModule
from mal.writer import MaskLabelWriter

# ckpt_path values that Lightning resolves itself (fit), not file names
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_ckpt_path(ckpt_path: str) -> None:
    """Refuse a missing checkpoint, or one whose pickle would run code, before any work starts."""
    if ckpt_path in LIGHTNING_CKPT_NAMES or ckpt_path.startswith("registry:"):
        return
    if not Path(ckpt_path).is_file():
        raise CheckpointError(f"--ckpt_path: {ckpt_path}: checkpoint file not found")
    load_weights(ckpt_path, CheckpointError, prefer_safetensors=False)


class Trainer(L.Trainer):
    """Lightning's Trainer with `precision: auto`, the default. The choice is logged in one line and kept, with
    why, in `precision_reason`.

    Args:
        precision: auto: bf16-mixed on a CUDA GPU with bf16 and on a CPU with native bf16 (AVX512-BF16 / AMX),
            16-mixed on other CUDA GPUs, 32-true elsewhere (labelkit.precision). Any Lightning precision
            (32-true, bf16-mixed, 16-mixed, ...) is used as given.
    """

    def __init__(self, *, precision: _PRECISION_INPUT | Literal["auto"] = "auto", **kwargs):
        device = accelerator_device(kwargs.get("accelerator", "auto"))
        precision, self.precision_reason = resolve_precision(precision, device, purpose=self.purpose)
        super().__init__(precision=precision, **kwargs)

    purpose = "train"  # "label" for predict / validate / test (set by MALCLI): labelkit.precision


class LabellingTrainer(Trainer):
    purpose = "label"


# Callbacks that only act while training (or log for it): predict leaves them out.
TRAINING_CALLBACKS = (Checkpoint, LearningRateMonitor, EarlyStopping)


def is_training_callback(callback) -> bool:
    """Whether a parsed `trainer.callbacks` entry ({class_path, init_args} or an instance) is a TRAINING_CALLBACKS."""
    if not hasattr(callback, "class_path"):
        return isinstance(callback, TRAINING_CALLBACKS)
    module, _, name = callback.class_path.rpartition(".")
    return issubclass(getattr(importlib.import_module(module), name), TRAINING_CALLBACKS)


def without_training_outputs(trainer) -> None:
    """Predict's trainer settings: no logger (each would make an empty version folder), no training callbacks."""
    trainer["logger"] = False
    trainer["enable_checkpointing"] = False
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or [] if not is_training_callback(c)]


class SaveFitConfig(SaveConfigCallback):
    """Keep the resolved config beside a fit's logs; other commands may have no log folder but the cwd."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class MALCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.crop_size", "model.crop_size")
        parser.add_lightning_class_args(MaskLabelWriter, "writer")

    def parse_arguments(self, parser, args) -> None:
        """Check --ckpt_path before Lightning reads it (its parse-time read would fail with a traceback), and
        remember the prediction options, which the checkpoint's hyperparameters must not replace."""
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", {})
        if config and config.get("ckpt_path"):
            check_ckpt_path(str(config["ckpt_path"]))
        self.prediction_options = {k: config["model"][k] for k in PREDICTION_OPTIONS} if config else {}

    def before_instantiate_classes(self) -> None:
        """Refuse non-weights-only checkpoint loading, read the architecture of the MAL checkpoint that
        `--ckpt_path` or `--model.pretrained_path` names, and check the data before any model work."""
        config = self.config[self.subcommand]
        for key, value in self.prediction_options.items():
            config["model"][key] = value
        if self.subcommand != "fit":
            self.trainer_class = LabellingTrainer
        if self.subcommand == "predict":
            without_training_outputs(config["trainer"])
        for weights in (config.get("ckpt_path"), config["model"].get("pretrained_path")):
            if weights and weights not in LIGHTNING_CKPT_NAMES and Path(weights).is_file():
                for key, value in with_architecture(config["model"].as_dict(), weights).items():
                    config["model"][key] = value
        if "weights_only" in config:
            if config["weights_only"] is False:
                raise CheckpointError("--weights_only false is not supported: checkpoints load weights-only")
            config["weights_only"] = True
        # Validate the annotation files before the model is built or any weights are read.
        self.checked_data = COCOBoxDataModule(**config["data"].as_dict())
        self.checked_data.load_annotations(self.subcommand)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule = self.checked_data  # the same settings, with its files already loaded


def evaluate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mal evaluate", description="mIoU and mask AP of a predicted COCO file against ground truth"
    )
    parser.add_argument("--pred", required=True, help="predicted COCO JSON (e.g. from `mal predict`)")
    parser.add_argument("--gt", required=True, help="ground-truth COCO JSON with masks")
    parser.add_argument("--output", help="also write the metrics as JSON here")
    args = parser.parse_args(argv)
    metrics = evaluate_files(args.pred, args.gt)
    print_table(metrics, f"{args.pred} vs {args.gt}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
    if "nothing_to_score" in metrics:  # a number over nothing would read as a result: exit 2
        raise ValueError(f"nothing to score: {metrics['nothing_to_score']}")


def cli_main(argv: list[str] | None = None) -> MALCLI | None:
    """Run one command; `argv=None` reads the command line. Returns the CLI (trainer, model) if any."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "evaluate":
        evaluate_main(args[1:])
        return None
    if args and args[0] == "selftrain":
        from mal.self_training import main as self_training_main  # it drives this CLI: imported when asked for

        self_training_main(args[1:])
        return None
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is sys.argv, expanded
    return MALCLI(
        MALModule,
        COCOBoxDataModule,
        trainer_class=Trainer,
        seed_everything_default=1234,
        args=expand_flags(args),
        save_config_callback=SaveFitConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=console_trainer_defaults(),
    )


def main() -> None:
    run_quietly(cli_main)


if __name__ == "__main__":
    main()
