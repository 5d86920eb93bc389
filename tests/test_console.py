"""What our commands print (labelkit.console): our own lines, not Lightning's tips or the libraries'
deprecation warnings; a progress line every few seconds where the output is no terminal; where the outputs
are at the end."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings

import lightning as L
import pytest
import torch
from conftest import REPO, TINY_MAL_ARGS
from torch.utils.data import DataLoader

from labelkit.console import LIGHTNING_LOGGERS, OutputsLine, ProgressLine, configure_console, pop_verbose
from mal.__main__ import cli_main


def test_verbose_is_ours_unless_it_has_a_value():
    assert pop_verbose(["mal", "predict", "--verbose", "--config", "c.yaml"]) == (
        ["mal", "predict", "--config", "c.yaml"],
        True,
    )
    assert pop_verbose(["validate", "--verbose", "false"]) == (["validate", "--verbose", "false"], False)
    assert pop_verbose(["predict"]) == (["predict"], False)


@pytest.fixture
def restored_console(monkeypatch):
    """configure_console changes process-wide state: put it back after the test. Within, no warning filter
    is set, as in a command (not pytest's, which hide every UserWarning)."""
    from transformers.utils import logging as transformers_logging

    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    bars = transformers_logging.is_progress_bar_enabled()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # and back as it was, after the test
    with warnings.catch_warnings():
        warnings.resetwarnings()
        yield transformers_logging
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    (transformers_logging.enable_progress_bar if bars else transformers_logging.disable_progress_bar)()


def warn_from(module: str, category: type[Warning]) -> list[str]:
    """The warnings shown when module `module` warns."""
    with warnings.catch_warnings(record=True) as caught:
        exec(f"import warnings\nwarnings.warn('from {module}', {category.__name__})", {"__name__": module})
    return [str(w.message) for w in caught]


def test_quiet_console_hides_lightning_chatter_and_other_modules_warnings(restored_console, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal: a log file
    configure_console(verbose=False)
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.WARNING for name in LIGHTNING_LOGGERS)
    assert not logging.getLogger("lightning.pytorch.utilities.rank_zero").isEnabledFor(logging.INFO)  # the tips
    assert warn_from("lightning.pytorch.loops.fit_loop", UserWarning) == []  # "modules in eval mode"
    assert warn_from("timm.models", DeprecationWarning) == []
    assert warn_from("mal.data", UserWarning) == ["from mal.data"]
    assert not restored_console.is_progress_bar_enabled()  # pytest's stderr is no terminal
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_verbose_console_changes_nothing(restored_console):
    configure_console(verbose=True)
    assert logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.INFO
    assert warn_from("timm.models", UserWarning) == ["from timm.models"]


class Tiny(L.LightningModule):
    """Fits on 8 numbers; predicts on lists of 'images' as our labelers' batches are."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def predict_step(self, batch, batch_idx):
        return len(batch)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False)
    return L.Trainer(**{**settings, "enable_progress_bar": False, "default_root_dir": tmp_path, **kwargs})


def test_progress_lines_for_fit_and_predict_where_there_is_no_terminal(tmp_path, capsys):
    model = Tiny()
    run = trainer(tmp_path, max_epochs=2, callbacks=[ProgressLine(every_s=0)])
    run.fit(model, DataLoader(torch.randn(8, 2), batch_size=2))
    run.predict(model, DataLoader(list(range(10)), batch_size=4, collate_fn=list), return_predictions=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "fit: 8 steps"
    assert re.fullmatch(r"fit: 3/8 steps \(38%\), epoch 1/2 \| [\d.]+ steps/s \| elapsed 0:00:\d\d \| ETA .*", lines[3])
    assert lines[9].startswith("fit: done, 8 steps in ")
    assert lines[10] == "predict: 3 batches"
    assert re.fullmatch(r"predict: 1/3 batches \(33%\) \| [\d.]+ images/s \| elapsed .* \| ETA .*", lines[11])
    assert lines[-1].startswith("predict: done, 3 batches, 10 images in ")


def test_one_line_every_interval_and_none_beside_a_progress_bar(tmp_path, capsys):
    loader = DataLoader(list(range(10)), batch_size=2, collate_fn=list)
    trainer(tmp_path, callbacks=[ProgressLine(every_s=3600)]).predict(Tiny(), loader, return_predictions=False)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["predict: 5 batches", "predict: done"]
    shown = trainer(tmp_path, enable_progress_bar=True, callbacks=[ProgressLine(every_s=0)])
    shown.predict(Tiny(), loader, return_predictions=False)
    assert "predict: 5 batches" not in capsys.readouterr().err


def test_a_fit_ends_with_where_its_checkpoints_are(tmp_path, capsys):
    run = trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[OutputsLine()])
    run.fit(Tiny(), DataLoader(torch.randn(4, 2), batch_size=2))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == f"fit: checkpoints in {tmp_path / 'checkpoints'}"
    assert lines[-1] == f"  best: {tmp_path / 'checkpoints' / 'epoch=0-step=2.ckpt'}"


def without(args: list[str], option: str) -> list[str]:
    i = args.index(option)
    return args[:i] + args[i + 2 :]


def test_mal_predict_into_a_pipe_prints_progress_and_no_lightning_chatter(synthetic, tmp_path):
    """`mal predict ... | tee log`: our lines, a progress line per batch here (every 0 s), no tip, no
    deprecation warning, no carriage-return bar; the last line says where the labels are."""
    fit = cli_main(
        ["fit", *TINY_MAL_ARGS, "--data.train_ann_path", str(synthetic["train"]), "--data.train_img_dir"]
        + [str(synthetic["images"]), "--trainer.max_epochs", "1", "--trainer.logger", "false"]
        + [f"--trainer.default_root_dir={tmp_path / 'fit'}"]
    )
    checkpoint = tmp_path / "tiny.ckpt"
    fit.trainer.save_checkpoint(checkpoint)
    out = tmp_path / "labels.json"
    command = [sys.executable, "-m", "mal", "predict", *without(TINY_MAL_ARGS, "--trainer.enable_progress_bar")]
    command += ["--ckpt_path", str(checkpoint), "--data.predict_ann_path", str(synthetic["val"])]
    command += ["--data.predict_img_dir", str(synthetic["images"]), "--writer.label_dump_path", str(out)]
    command += ["--trainer.logger", "false"]
    env = {**os.environ, "AUTO_LABEL_PROGRESS_EVERY": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env, timeout=300
    )
    output = result.stdout
    assert result.returncode == 0, output
    assert re.search(r"^predict: 2/2 batches \(100%\) \| [\d.]+ images/s", output, re.MULTILINE), output
    assert "predict: done, 2 batches, 3 images" in output
    for chatter in ("Tip:", "litlogger", "deprecated", "Deprecation", "eval mode", "GPU available", "\r"):
        assert chatter not in output, chatter
    assert re.search(rf"wrote \d+ annotations to {re.escape(str(out))}$", output.splitlines()[-1])
