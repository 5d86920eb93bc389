"""Resume: a run killed with SIGKILL mid-way and started again ends with exactly the uninterrupted output."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from auto_label_helpers import big_boxes_file, mal_spec, text2mask_spec, tiny_assets, write_spec
from conftest import REPO
from gdino_helpers import needs_vocab

from auto_label.__main__ import cli
from labelkit.shards import ShardError, ShardStore

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@dataclass
class Stopped:
    done: int  # the progress (finished items in the shards) when the signal was sent
    status: int  # the exit status (minus the signal's number: killed by it)
    stderr: str


def shard_lines(shard_dir: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in shard_dir.glob("rank*.jsonl"))


def interruptible() -> None:
    """In the child before it starts: Ctrl-C's default action, as in a terminal. Tests run as a background job
    (`make test &`, a CI runner) inherit the shell's ignored SIGINT, which the command rightly leaves alone."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_when(command: list[str], progress: Callable[[], int], at_least: int, signum: int) -> Stopped:
    """Start the real command (one torch thread), send it `signum` once `progress()` reaches `at_least`, and wait
    for it to end. stderr goes to a file: a pipe nobody reads while polling could fill and stall the command."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command, cwd=REPO, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=interruptible
        )
        deadline = time.monotonic() + 240
        try:
            while (done := progress()) < at_least:
                assert proc.poll() is None, "the run finished before it could be stopped"
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            proc.send_signal(signum)
            status = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return Stopped(done, status, err.read().decode(errors="replace"))


def stop_when_shards_have(command: list[str], shard_dir: Path, lines: int, signum: int = signal.SIGKILL) -> Stopped:
    """`stop_when` the command's shards hold `lines` finished items."""
    return stop_when(command, lambda: shard_lines(shard_dir), lines, signum)


def generate_command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "auto_label", "generate", "-e", str(spec)]


def test_killed_mal_run_resumes_to_the_uninterrupted_output(assets, tmp_path):
    ann_path, img_dir = big_boxes_file(tmp_path)

    def spec(name):
        return mal_spec(tmp_path / f"{name}.yaml", tmp_path / name, assets["mal_checkpoint"], ann_path, img_dir)

    cli(["generate", "-e", str(spec("reference"))])
    killed = spec("killed")
    done = stop_when_shards_have(generate_command(killed), tmp_path / "killed" / ".labels.json.shards", 2).done
    assert 2 <= done < 16 and not (tmp_path / "killed" / "labels.json").exists()

    report = cli(["generate", "-e", str(killed)])  # the same command again
    assert 2 <= report["counts"]["resumed_items"] < 16
    assert report["images_this_run"] == 16 - report["counts"]["resumed_items"]
    labels = (tmp_path / "killed" / "labels.json").read_bytes()
    assert labels == (tmp_path / "reference" / "labels.json").read_bytes()


@needs_vocab
def test_killed_text2mask_run_resumes_and_fresh_starts_over(assets, tmp_path):
    cli(["generate", "-e", str(write_spec(tmp_path / "ref.yaml", text2mask_spec(assets, tmp_path / "ref")))])
    spec = write_spec(tmp_path / "run.yaml", text2mask_spec(assets, tmp_path / "run"))
    shard_dir = tmp_path / "run" / "grounding_dino" / ".labels.json.shards"
    done = stop_when_shards_have(generate_command(spec), shard_dir, 3).done
    assert done < 16
    with (shard_dir / "rank00000.jsonl").open("a") as f:
        f.write('{"index": 15, "file_name": "trai')  # what a kill in the middle of a write leaves

    report = cli(["generate", "-e", str(spec)])
    assert report["stages"][0]["resumed_items"] == done
    for stage in ("grounding_dino", "mal"):
        produced = (tmp_path / "run" / stage / "labels.json").read_bytes()
        assert produced == (tmp_path / "ref" / stage / "labels.json").read_bytes()
    assert not list((tmp_path / "run").rglob(".*shards"))

    again = cli(["generate", "-e", str(spec), "--fresh"])
    assert again["counts"]["resumed_items"] == 0 and again["images_this_run"] == 16
    assert (tmp_path / "run" / "mal" / "labels.json").read_bytes() == (
        tmp_path / "ref" / "mal" / "labels.json"
    ).read_bytes()


def test_partial_last_line_is_ignored_then_cut_and_merge_is_exactly_once(tmp_path):
    store = ShardStore(tmp_path / "shards", "key")
    store.open(0)
    store.write([{"key": 2, "v": "b"}, {"key": 0, "v": "a"}])
    store.close()
    with (tmp_path / "shards" / "rank00000.jsonl").open("a") as f:
        f.write('{"key": 4, "v"')  # killed mid-write
    store.open(1)
    store.write([{"key": 2, "v": "b"}, {"key": 1, "v": "c"}])  # a repeat by a second attempt is the same item
    store.close()
    assert store.done_keys() == {0, 1, 2}
    store.open(0)  # appending after the cut
    store.write([{"key": 4, "v": "d"}])
    store.close()
    assert [r["key"] for r in store.merged()] == [0, 1, 2, 4]
    assert (tmp_path / "shards" / "rank00000.jsonl").read_text().count("\n") == 3


def test_shards_of_a_different_run_are_refused(tmp_path):
    store = ShardStore(tmp_path / "shards", "key")
    store.write_manifest({"input": "abc", "model": {"mask_thres": 0.1}})
    store.check({"input": "abc", "model": {"mask_thres": 0.1}})
    with pytest.raises(ShardError, match="different model; start over with --fresh"):
        store.check({"input": "abc", "model": {"mask_thres": 0.5}})


def test_keys_are_read_from_the_line_start_and_any_other_layout_still_works(tmp_path):
    store = ShardStore(tmp_path / "shards", "key")
    store.open(0)
    store.write([{"key": 12, "v": [1, {"key": 0}]}, {"key": -3, "v": "é"}])
    store.close()
    with (tmp_path / "shards" / "rank00001.jsonl").open("w") as f:
        f.write('{"v": "key first", "key": 5}\n{"key" : 7}\n{"key":12,"v":"a second attempt"}\n')
    assert store.done_keys() == {-3, 5, 7, 12}
    merged = store.index()
    expected = [{"key": -3, "v": "é"}, {"key": 5, "v": "key first"}, {"key": 7}, {"key": 12, "v": [1, {"key": 0}]}]
    assert list(merged) == list(merged) == list(store.merged()) == expected  # one scan, read as often as needed


def test_a_damaged_complete_line_is_named_when_merging(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "rank00000.jsonl").write_text('{"key":1}\n{"key":2,"v":\n{"key":0}\n')
    store = ShardStore(tmp_path / "shards", "key")
    with pytest.raises(ShardError, match=r"rank00000.jsonl: line 2: not a result record"):
        list(store.merged())
    (tmp_path / "shards" / "rank00000.jsonl").write_text('{"key":1}\n{"other":2}\n')
    with pytest.raises(ShardError, match=r"rank00000.jsonl: line 2: not a result record \('key'\)"):
        store.done_keys()
