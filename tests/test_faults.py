"""Faults: Ctrl-C keeps what is done, a kill never corrupts a final file, full or unwritable disks fail
early, and an out-of-memory batch is retried smaller."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from auto_label_helpers import big_boxes_file, mal_spec, mal_spec_dict, tiny_assets, write_spec
from bad_inputs import run_command
from conftest import REPO, TINY_MAL_ARGS
from test_resume import generate_command, shard_lines, stop_when_shards_have

import auto_label.__main__
import gdino.__main__
import mal.__main__
from auto_label.__main__ import cli
from labelkit.coco import load_coco
from labelkit.oom import is_out_of_memory, map_chunks
from labelkit.writers import _writer_tag, check_writable, write_jsonl
from mal.data import ImageBoxesDataset
from mal.module import MALModule

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.mark.parametrize(
    "signum, status, stop",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["ctrl_c", "sigterm"],
)
def test_a_stop_signal_keeps_finished_images_and_the_run_resumes(assets, tmp_path, signum, status, stop):
    """Ctrl-C, and SIGTERM as docker stop, SLURM preemption and systemd send it, stop `generate` within the
    image it works on (one a batch here); the same command then labels the rest, to the uninterrupted file."""
    ann, images = big_boxes_file(tmp_path, num_images=6, seed=1)

    def spec(name):
        return mal_spec(tmp_path / f"{name}.yaml", tmp_path / name, assets["mal_checkpoint"], ann, images)

    run = spec("run")
    shards = tmp_path / "run" / ".labels.json.shards"
    stopped = stop_when_shards_have(generate_command(run), shards, 1, signum)
    assert stopped.status == status and "Traceback" not in stopped.stderr
    assert f"{stop}: the finished results are kept in" in stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    assert not (tmp_path / "run" / "labels.json").exists()
    done = shard_lines(shards)
    assert stopped.done <= done <= stopped.done + 1 < 6  # the image under way at the signal, at most

    report = cli(["generate", "-e", str(run)])
    assert report["counts"]["resumed_items"] == done and report["images_this_run"] == 6 - done
    cli(["generate", "-e", str(spec("reference"))])
    assert (tmp_path / "run" / "labels.json").read_bytes() == (tmp_path / "reference" / "labels.json").read_bytes()


KILL_MID_WRITE = """
import os, signal, sys
from labelkit.writers import write_coco, write_jsonl
def records():
    for i in range(10000):
        if i == 5000:
            os.kill(os.getpid(), signal.SIGKILL)
        yield {"id": i, "bbox": [i, i, 1, 1]}
if sys.argv[2] == "coco":
    write_coco(sys.argv[1], {"images": [], "categories": []}, records())
else:
    write_jsonl(sys.argv[1], records())
"""


IGNORED_SIGINT = """
import os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started in the background by a script
from labelkit.cli import run_guarded
def main(argv):
    os.kill(os.getpid(), signal.SIGINT)
    print("carried on")
run_guarded(main)
"""


def test_an_ignored_sigint_stays_ignored():
    result = subprocess.run(
        [sys.executable, "-c", IGNORED_SIGINT], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "carried on" in result.stdout


@pytest.mark.parametrize("kind", ["coco", "jsonl"])
def test_sigkill_mid_write_leaves_the_previous_file_intact(tmp_path, kind):
    out = tmp_path / "labels.json"
    out.write_text('{"previous": "complete file"}\n')
    result = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(out), kind], cwd=REPO, env=ENV, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert json.loads(out.read_text()) == {"previous": "complete file"}
    leftovers = list(tmp_path.glob(".labels.json.*.tmp"))  # the half-written temporary, never the final name
    assert len(leftovers) == 1 and b'{"id":0,' in leftovers[0].read_bytes()
    assert b'"id":5000' not in leftovers[0].read_bytes()
    live = tmp_path / f".labels.json.{_writer_tag()}.x.tmp"
    live.write_text("a writer that still runs")
    write_jsonl(out, [{"id": 1}])  # the next write removes the killed writer's temporary, not a live one's
    assert out.read_text() == '{"id":1}\n'
    assert sorted(tmp_path.glob(".labels.json.*.tmp")) == [live]


def unwritable_commands(assets, results, spec_dir):
    """Each command with its results under `results` and, where possible, weights that do not exist."""
    spec = mal_spec_dict(
        results, spec_dir / "absent.ckpt", assets["boxes"], assets["images"]
    )  # the disk is checked first
    predict = ["--data.predict_ann_path", str(assets["boxes"]), "--data.predict_img_dir", str(assets["images"])]
    return {
        "mal predict": (
            mal.__main__.main,
            ["mal", "predict", *TINY_MAL_ARGS, *predict, "--ckpt_path", str(assets["mal_checkpoint"])]
            + ["--trainer.logger", "false", "--writer.label_dump_path", str(results / "labels.json")]
            + [f"--trainer.default_root_dir={spec_dir}"],
        ),
        "gdino label": (
            gdino.__main__.main,
            ["gdino", "label", "--model.path", str(assets["gdino"]), "--data.image_dir", str(assets["images"])]
            + ["--data.class_names", "[star]", "--output", str(results / "labels.json")],
        ),
        "generate": (
            auto_label.__main__.main,
            ["auto_label", "generate", "-e", str(write_spec(spec_dir / "s.yaml", spec))],
        ),
    }


@pytest.mark.parametrize("command", ["mal predict", "gdino label", "generate"])
def test_unwritable_results_directory_fails_before_the_work(assets, tmp_path, capsys, monkeypatch, command):
    (tmp_path / "a_file").write_text("")
    results = tmp_path / "a_file" / "results"  # cannot be created: its parent is a file
    main, argv = unwritable_commands(assets, results, tmp_path)[command]
    code, err = run_command(main, argv, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert f"results directory {results} is not writable" in err


def test_full_disk_is_refused_before_the_work(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OSError, match=r"its disk is \(nearly\) full: .* MiB free"):
        check_writable(tmp_path, min_free_bytes=free + 2**40)
    check_writable(tmp_path)  # this disk has room


def test_a_failing_write_is_refused_before_the_work(tmp_path):
    """A real write failure (file-size limit of 1 KiB; the kernel's answer is like a full disk's)."""
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
        "from labelkit.writers import check_writable; check_writable(sys.argv[1])"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and f"results directory {tmp_path} is not writable: File too large" in result.stderr


# ----------------------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: out of memory"),
    ],
)
def test_out_of_memory_chunks_are_halved_until_they_fit(error):
    sizes = []

    def double(chunk: slice) -> list[int]:
        sizes.append(chunk.stop - chunk.start)
        if chunk.stop - chunk.start > 3:  # "memory" holds at most 3 items
            raise error
        return [2 * i for i in range(chunk.start, chunk.stop)]

    parts = map_chunks(double, 11, 16)
    assert [x for part in parts for x in part] == [2 * i for i in range(11)]
    assert sizes == [11, 5, 2, 2, 2, 2, 2, 1]  # 11 -> 5 -> 2 fit; the rest keep the size that worked
    assert is_out_of_memory(error)


def test_out_of_memory_on_one_item_and_other_errors_are_raised():
    def always_oom(chunk):
        raise MemoryError

    with pytest.raises(MemoryError):
        map_chunks(always_oom, 4, 4)

    def bug(chunk):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        map_chunks(bug, 4, 4)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_mal_prediction_survives_an_out_of_memory_forward(assets):
    """The real model and image; the forward pass fails like a full GPU above 2 crops at once."""
    module = MALModule.load_from_checkpoint(assets["mal_checkpoint"], map_location="cpu", weights_only=True).eval()
    coco = load_coco(assets["boxes"], assets["images"])
    dataset = ImageBoxesDataset(coco, (0.6, 0.6), module.hparams.crop_size)
    sample = max((dataset[i] for i in range(len(dataset))), key=lambda s: len(s["boxes"]))
    assert len(sample["boxes"]) >= 3
    reference = module.predict_image(sample)
    forward = module.student.forward

    def small_memory(images, *args):
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return forward(images, *args)

    module.student.forward = small_memory
    results = module.predict_image(sample)
    assert len(results) == len(reference)
    for got, want in zip(results, reference):
        assert (got["x0"], got["y0"]) == (want["x0"], want["y0"]) and np.array_equal(got["mask"], want["mask"])


# ------------------------------------------------------------------------------------------ image sizes
def test_mal_fit_skips_and_lists_an_image_whose_size_is_not_its_records(assets, tmp_path, capsys, monkeypatch):
    """As predict does: boxes drawn on another version of an image (a resized export) would train on the wrong
    pixels. Without --strict the image is skipped and listed; with it, fit stops with exit status 2."""
    data = json.loads(assets["boxes"].read_text())
    data["annotations"] = [{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]]
    data["images"][1]["width"] = 100  # the file is 128 wide
    train = tmp_path / "train.json"
    train.write_text(json.dumps(data))
    boxes = sum(a["image_id"] == data["images"][1]["id"] for a in data["annotations"])
    argv = [
        *("mal", "fit", *TINY_MAL_ARGS, "--data.train_ann_path", str(train)),
        *("--data.train_img_dir", str(assets["images"]), "--trainer.max_epochs", "1", "--trainer.logger", "false"),
        f"--trainer.default_root_dir={tmp_path}",
    ]
    code, err = run_command(mal.__main__.main, argv, capsys, monkeypatch)
    assert code == 0, err
    (error,) = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert error["file_name"] == data["images"][1]["file_name"] and error["boxes_skipped"] == boxes
    assert error["reason"] == "decoded image is 128x96 but the annotation file says 100x96"

    code, err = run_command(mal.__main__.main, [*argv, "--strict"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert f"--strict: {data['images'][1]['file_name']}: decoded image is 128x96" in err
