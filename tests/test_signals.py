"""Stop signals: SIGTERM (docker stop, SLURM preemption, systemd) stops every command within the batch under
way, as Ctrl-C does: the finished results are kept, the exit status is 143 (Ctrl-C: 130), and the same
command resumes to the output of an uninterrupted run, while a resume with settings that change the output
is refused. A run that fails before its first result leaves nothing that blocks the corrected command.
(`auto_label generate`: tests/test_faults.py, with Ctrl-C.)"""

import os
import signal
import sys
import time

import pytest
from auto_label_helpers import big_boxes_file, mal_predict_args, tiny_assets
from bad_inputs import run_command
from conftest import TINY_MAL_ARGS
from gdino_helpers import needs_vocab
from sam_helpers import model_dir, predict_args, sam_command
from test_resume import shard_lines, stop_when, stop_when_shards_have

import gdino.__main__
import mal.__main__
import sam.__main__
from labelkit.cli import run_stoppable
from mal.checkpoint import describe_checkpoint
from mal.writer import MaskLabelWriter

SIGTERM_STATUS = 143


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Six 1200 x 1600 images with 30 boxes each: about a second an image, to be stopped between two."""
    return big_boxes_file(tmp_path_factory.mktemp("big"), num_images=6, seed=2)


def check_stopped(stopped, shards, total: int) -> int:
    """A SIGTERM'd run: status 143, no traceback, the resume hint, at most the batch under way finished after
    the signal (one image a batch), not all of them; returns how many are done."""
    assert stopped.status == SIGTERM_STATUS, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert "the finished results are kept in" in stopped.stderr and "run the same command again" in stopped.stderr
    done = shard_lines(shards)
    assert stopped.done <= done <= stopped.done + 1 < total
    return done


def summary(cli) -> dict:
    """The counts of the MAL or SAM run of `cli`."""
    return next(c for c in cli.trainer.callbacks if isinstance(c, MaskLabelWriter)).summary


def gdino_label_args(model, image_dir, out, *extra: str) -> list[str]:
    """`gdino label` of the tiny model (at the model's image size unless `extra` says otherwise), one process."""
    return [
        *("label", "--config", "configs/gdino/tiny.yaml", "--model.path", str(model), "--data.num_workers", "0"),
        *("--data.image_dir", str(image_dir), "--data.class_names", "[star, ring]"),
        *("--trainer.enable_progress_bar", "false", "--output", str(out), *extra),
    ]


# ------------------------------------------------------------------------------------- the exit status
def send_self(signum):
    def main(args):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal is raised before this ends
        raise AssertionError("the signal did not stop the command")

    return main


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, SIGTERM_STATUS)])
def test_stop_signals_give_the_shell_status_and_the_handlers_are_restored(signum, status, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert run_stoppable(send_self(signum), [], debug=False) == status
    assert capsys.readouterr().err.strip() == ("terminated" if signum == signal.SIGTERM else "interrupted")
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_sigterm_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under nohup-like parents that asked for it
    try:
        assert run_stoppable(lambda args: os.kill(os.getpid(), signal.SIGTERM), [], debug=False) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------ the commands
def test_sigterm_stops_mal_predict_and_the_same_command_resumes(assets, big, tmp_path, capsys, monkeypatch):
    ann, images = big

    def args(name, *extra):
        out = tmp_path / name / "labels.json"
        return mal_predict_args(assets["mal_checkpoint"], ann, images, out, "--data.eval_batch_size", "1", *extra)

    shards = tmp_path / "run" / ".labels.json.shards"
    stopped = stop_when_shards_have([sys.executable, "-m", "mal", *args("run")], shards, 1, signal.SIGTERM)
    done = check_stopped(stopped, shards, 6)
    assert not (tmp_path / "run" / "labels.json").exists()

    code, err = run_command(mal.__main__.main, ["mal", *args("run", "--model.mask_thres", "0.3")], capsys, monkeypatch)
    assert code == 2 and "holds partial results of a run with different model" in err  # the output would change

    # the same command again, the work cut otherwise: that does not change the output (test_output_independence.py)
    cli = mal.__main__.cli_main(args("run", "--data.eval_batch_size", "3", "--model.max_boxes_per_forward", "2"))
    assert summary(cli)["resumed_items"] == done and summary(cli)["images_this_run"] == 6 - done
    mal.__main__.cli_main(args("reference"))
    assert (tmp_path / "run" / "labels.json").read_bytes() == (tmp_path / "reference" / "labels.json").read_bytes()


def test_sigterm_stops_mal_fit_within_a_step(assets, tmp_path):
    """Training stops in the step under way with 143 (Lightning alone stops after the step with exit status 0,
    which a scheduler reads as a finished job); the checkpoints saved so far stay complete, for
    `fit --ckpt_path` to resume from."""
    command = [
        *(sys.executable, "-m", "mal", "fit", *TINY_MAL_ARGS, "--data.batch_size", "1"),
        *("--data.train_ann_path", str(assets["boxes"]), "--data.train_img_dir", str(assets["images"])),
        *("--trainer.max_epochs", "1000", "--trainer.logger", "false", f"--trainer.default_root_dir={tmp_path}"),
    ]
    checkpoints = tmp_path / "checkpoints"
    stopped = stop_when(command, lambda: len(list(checkpoints.glob("*.ckpt"))), 1, signal.SIGTERM)
    assert stopped.status == SIGTERM_STATUS and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    (checkpoint,) = checkpoints.glob("*.ckpt")
    assert checkpoint.name.startswith("epoch=")
    describe_checkpoint(checkpoint)  # a complete file, which the signal did not cut


@needs_vocab
def test_sigterm_stops_gdino_label_and_the_same_command_resumes(assets, big, tmp_path, capsys, monkeypatch):
    def args(name, *extra):
        return gdino_label_args(assets["gdino"], big[1], tmp_path / name / "labels.json", *extra)

    shards = tmp_path / "run" / ".labels.json.shards"
    stopped = stop_when_shards_have([sys.executable, "-m", "gdino", *args("run")], shards, 1, signal.SIGTERM)
    check_stopped(stopped, shards, 6)

    other_limit = ["gdino", *args("run", "--data.max_pixels", "1000000")]  # these images would be skipped
    code, err = run_command(gdino.__main__.main, other_limit, capsys, monkeypatch)
    assert code == 2 and "holds partial results of a run with different max_pixels" in err

    assert gdino.__main__.main(args("run")) == 0
    assert gdino.__main__.main(args("reference")) == 0
    assert (tmp_path / "run" / "labels.json").read_bytes() == (tmp_path / "reference" / "labels.json").read_bytes()


def test_sigterm_stops_sam_predict_and_the_same_command_resumes(big, tmp_path_factory, tmp_path):
    ann, images = big
    model = model_dir(tmp_path_factory, "sam")

    def args(name):
        return predict_args(model, ann, tmp_path / name / "masks.json", "--data.batch_size", "1", image_dir=images)

    shards = tmp_path / "run" / ".masks.json.shards"
    done = check_stopped(stop_when_shards_have(sam_command(*args("run")), shards, 1, signal.SIGTERM), shards, 6)
    assert summary(sam.__main__.cli_main(args("run")))["resumed_items"] == done
    sam.__main__.cli_main(args("reference"))
    assert (tmp_path / "run" / "masks.json").read_bytes() == (tmp_path / "reference" / "masks.json").read_bytes()


# ------------------------------------------------------------------------- runs that fail before any result
@needs_vocab
@pytest.mark.parametrize(
    "bad, message",
    [
        (["--model.class_thresholds", "{tree: 0.3}"], "class_thresholds: 'tree' is not one of the classes"),
        (["--data.class_names", "[star, ring, ☃]"], "prompt 2 '☃': only unknown tokens ([UNK])"),
    ],
    ids=["class_threshold", "prompt"],
)
def test_a_run_that_failed_before_its_first_result_does_not_block_the_corrected_command(
    assets, tmp_path, capsys, monkeypatch, bad, message
):
    """Both are found once the model and the data meet, after the run's shard folder was started."""

    def run(name, *extra):
        small = ("--model.image_size", '{"shortest_edge": 96, "longest_edge": 160}')
        argv = [
            "gdino",
            *gdino_label_args(assets["gdino"], assets["images"], tmp_path / name / "o.json", *small, *extra),
        ]
        return run_command(gdino.__main__.main, argv, capsys, monkeypatch)

    code, err = run("run", *bad)
    assert code == 2 and message in err and "Traceback" not in err
    code, err = run("run")  # corrected
    assert code == 0, err
    assert run("reference")[0] == 0
    assert (tmp_path / "run" / "o.json").read_bytes() == (tmp_path / "reference" / "o.json").read_bytes()
