"""Exactly-once labeling over processes: real DDP runs on CPU (gloo) give the output of one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from auto_label_helpers import mal_spec_dict, text2mask_spec, tiny_assets, write_spec
from conftest import REPO
from gdino_helpers import needs_vocab

from auto_label.__main__ import cli
from labelkit.sharding import ExactShardSampler


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def generate_in_processes(spec, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "auto_label", "generate", "-e", str(spec), f"num_gpus={processes}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_item_goes_to_exactly_one_rank():
    shards = [list(ExactShardSampler(7, rank, 3, skip={4})) for rank in range(3)]
    assert shards == [[0, 3], [1, 5], [2, 6]]
    assert sorted(i for s in shards for i in s) == [0, 1, 2, 3, 5, 6]  # no padding, no repeat
    assert list(ExactShardSampler(1, 1, 2)) == []
    # A resumed run whose finished items were all rank 0's still splits what is left evenly.
    resumed = [list(ExactShardSampler(8, rank, 2, skip={0, 2, 4, 6})) for rank in range(2)]
    assert resumed == [[1, 5], [3, 7]]


@needs_vocab
def test_two_processes_write_what_one_writes(assets, tmp_path):
    one = cli(["generate", "-e", str(write_spec(tmp_path / "one.yaml", text2mask_spec(assets, tmp_path / "one")))])
    generate_in_processes(write_spec(tmp_path / "two.yaml", text2mask_spec(assets, tmp_path / "two")), 2)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["processes"] == 2 and report["counts"] == one["counts"]

    for stage in ("grounding_dino", "mal"):  # byte for byte: no output depends on the processes
        produced = [(tmp_path / d / stage / "labels.json").read_bytes() for d in ("one", "two")]
        assert produced[0] == produced[1], stage


def test_a_rank_with_nothing_to_do_does_not_hang(assets, tmp_path):
    data = json.loads(assets["boxes"].read_text())
    data["images"] = data["images"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    one_image = tmp_path / "one_image.json"
    one_image.write_text(json.dumps(data))
    spec = mal_spec_dict(tmp_path / "out", assets["mal_checkpoint"], one_image, assets["images"], num_workers=0)
    generate_in_processes(write_spec(tmp_path / "s.yaml", spec), 2)
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert [a["id"] for a in labels["annotations"]] == [a["id"] for a in data["annotations"]]
    assert all(np.isfinite(a["mal_score"]) for a in labels["annotations"])
