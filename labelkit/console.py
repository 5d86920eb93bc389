"""What our commands print: our own lines, a progress line where no progress bar can be drawn, and at the end
where the outputs are.

Lightning talks a lot on its own: tips for its cloud products, "GPU available" lines, notes on modules in eval
mode, and the deprecation warnings of the libraries under it. A person running `mal predict` wants to know
what the run is doing and where its results went; `--verbose` brings the rest back. Lightning's progress bar
redraws itself with carriage returns, which fills a log file (CI, nohup, `| tee`) with one long line, so
where stderr is no terminal the bar is off and `ProgressLine` prints one line every few seconds instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

from lightning.pytorch.callbacks import Callback

# Lightning sets these loggers to INFO when it is first imported (importing this module has done that).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
# The modules whose warnings are ours, and are shown without --verbose.
OUR_MODULES = r"(auto_label|mal|gdino|sam)(\.|$)"
# Seconds between two progress lines; the environment variable sets another interval (0: every batch).
PROGRESS_EVERY_ENV = "AUTO_LABEL_PROGRESS_EVERY"
DEFAULT_PROGRESS_EVERY_S = 30.0
BOOLEAN_WORDS = ("true", "false", "yes", "no", "1", "0", "on", "off")


def pop_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without a bare `--verbose`, whether it was there). `--verbose true|false`, the option of
    LightningCLI's validate and test commands that prints their metrics, is left to them."""
    kept, verbose = [], False
    for i, arg in enumerate(argv):
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if arg == "--verbose" and following not in BOOLEAN_WORDS:
            verbose = True
        else:
            kept.append(arg)
    return kept, verbose


def configure_console(verbose: bool) -> None:
    """Without `verbose`: Lightning's INFO lines (its tips among them) and the warnings of every module but
    ours are not shown; Lightning's own warnings that go through logging still are. With `verbose`, all is
    shown as the libraries mean it."""
    for name in LIGHTNING_LOGGERS:  # INFO is the level Lightning sets for itself when imported
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=OUR_MODULES)  # inserted first, so it wins for our modules
    if not sys.stderr.isatty():
        disable_hugging_face_bars()


def disable_hugging_face_bars() -> None:
    """Hugging Face's tqdm bars (transformers' "Loading weights", hub downloads) redraw with carriage
    returns too. transformers reads the switch when first imported: the variable covers an import still to
    come (and the other ranks' processes), the call one already done."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()


def console_trainer_defaults() -> dict:
    """Trainer defaults for our command lines: Lightning's bar on a terminal, else (a log file, CI, nohup)
    a `ProgressLine`; and `OutputsLine`, which ends a fit, validate or test with where its outputs are."""
    return {"enable_progress_bar": sys.stderr.isatty(), "callbacks": [ProgressLine(), OutputsLine()]}


def format_duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


@dataclass
class _Stage:
    """The counts of the loop being reported on."""

    name: str
    total: float  # batches (fit: optimizer steps); inf or 0 when Lightning cannot tell
    unit: str
    start: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)
    done: int = 0
    images: int = 0  # predict and evaluation batches are lists of per-image records

    def rate(self, elapsed: float) -> str:
        if self.images:
            return f"{self.images / elapsed:.2f} images/s"
        return f"{self.done / elapsed:.2f} {self.unit}/s"

    def line(self, now: float, extra: str = "") -> str:
        elapsed = max(now - self.start, 1e-9)
        known = 0 < self.total < float("inf")
        count = f"{self.done}/{int(self.total)} {self.unit} ({self.done / self.total:.0%})" if known else self.done
        parts = [f"{self.name}: {count}{extra}", self.rate(elapsed), f"elapsed {format_duration(elapsed)}"]
        if known and self.done:
            parts.append(f"ETA {format_duration(elapsed * (self.total - self.done) / self.done)}")
        return " | ".join(parts)

    def summary(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        images = f", {self.images} images" if self.images else ""
        took = f"in {format_duration(elapsed)} ({self.rate(elapsed)})"
        return f"{self.name}: done, {self.done} {self.unit}{images} {took}"


class ProgressLine(Callback):
    """One progress line every `every_s` seconds (done/total, speed, ETA) on stderr, and one when the loop
    ends, for fit, validate, test and predict. It speaks only where no progress bar is shown and stderr is
    not a terminal, and only on rank 0 (whose share of the work the counts are).

    Args:
        every_s: seconds between lines; None: $AUTO_LABEL_PROGRESS_EVERY, else 30.
    """

    def __init__(self, every_s: float | None = None):
        if every_s is None:
            every_s = float(os.environ.get(PROGRESS_EVERY_ENV, DEFAULT_PROGRESS_EVERY_S))
        self.every_s = every_s
        self.enabled = False
        self._stage: _Stage | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        tty = sys.stderr.isatty()
        self.enabled = trainer.is_global_zero and trainer.progress_bar_callback is None and not tty

    def _print(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _begin(self, trainer, name: str, total: float, unit: str) -> None:
        if not self.enabled:
            return
        self._stage = _Stage(name, total, unit)
        processes = f" (rank 0's share; {trainer.world_size} processes)" if trainer.world_size > 1 else ""
        known = 0 < total < float("inf")
        self._print(f"{name}: {int(total) if known else 'an unknown number of'} {unit}{processes}")

    def _advance(self, name: str, batch, done: int | None = None, extra: str = "") -> None:
        stage = self._stage
        if stage is None or stage.name != name:
            return
        stage.done = stage.done + 1 if done is None else done
        stage.images += len(batch) if isinstance(batch, list) else 0
        now = time.monotonic()
        if now - stage.last_line >= self.every_s:
            stage.last_line = now
            self._print(stage.line(now, extra))

    def _end(self, name: str) -> None:
        if self._stage is not None and self._stage.name == name:
            self._print(self._stage.summary(time.monotonic()))
            self._stage = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._begin(trainer, "fit", trainer.estimated_stepping_batches, "steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._advance("fit", batch, trainer.global_step, f", epoch {trainer.current_epoch + 1}{epochs}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._end("fit")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":  # not the validation inside a fit
            self._begin(trainer, "validate", sum(trainer.num_val_batches), "batches")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance("validate", batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._end("validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._begin(trainer, "test", sum(trainer.num_test_batches), "batches")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance("test", batch)

    def on_test_end(self, trainer, pl_module) -> None:
        self._end("test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._begin(trainer, "predict", sum(trainer.num_predict_batches), "batches")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance("predict", batch)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._end("predict")


class OutputsLine(Callback):
    """The last lines of a fit, validate or test say where its checkpoints and logs are (rank 0), after
    Lightning's metrics table. A predict run's writer already ends with the file it wrote."""

    def teardown(self, trainer, pl_module, stage: str) -> None:
        stage = trainer.state.fn.value  # `stage` is the enum, which prints as TrainerFn.FITTING
        if not trainer.is_global_zero or stage == "predict":
            return
        lines = []
        checkpoint = trainer.checkpoint_callback if stage == "fit" else None
        if checkpoint is not None and (checkpoint.best_model_path or checkpoint.last_model_path):
            lines.append(f"{stage}: checkpoints in {checkpoint.dirpath}")
            lines += [f"  best: {checkpoint.best_model_path}"] if checkpoint.best_model_path else []
            lines += [f"  last: {checkpoint.last_model_path}"] if checkpoint.last_model_path else []
        if trainer.loggers and trainer.log_dir:
            lines.append(f"{stage}: logs in {trainer.log_dir}")
        for line in lines:
            print(line, flush=True)


def run_quietly(command) -> None:
    """A command line's `main`: a bare `--verbose` taken off, the console configured, `command` run guarded
    (labelkit.cli.run_guarded: one error line, exit 2 / 130 / 143)."""
    from labelkit.cli import run_guarded

    sys.argv, verbose = pop_verbose(sys.argv)
    configure_console(verbose)
    run_guarded(command)
