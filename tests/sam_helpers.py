"""Tiny Segment Anything models saved as local Hugging Face directories, and COCO box files from coco128."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import COCO128, REPO

from sam.tiny import save_tiny

COCO128_IMAGES = COCO128 / "images"
needs_coco128 = pytest.mark.skipif(
    not (COCO128 / "annotations" / "instances.json").is_file(), reason=f"coco128 not found at {COCO128}"
)
_DIRS: dict[str, Path] = {}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def model_dir(tmp_path_factory, family: str) -> Path:
    """The tiny random model of `family` as a local HF directory, saved once per test session."""
    if family not in _DIRS:
        torch.set_num_threads(1)
        _DIRS[family] = save_tiny(tmp_path_factory.mktemp(f"sam_{family}") / family, family)
    return _DIRS[family]


def coco128_boxes(path: Path, num_images: int = 4, odd_boxes: bool = True) -> Path:
    """The first `num_images` coco128 images with their annotations (segmentations dropped: boxes only, crowd
    regions kept) and, with `odd_boxes`, a zero-width box, a box reaching out of its image and one outside it."""
    coco = json.loads((COCO128 / "annotations" / "instances.json").read_text())
    images = coco["images"][:num_images]
    ids = {image["id"] for image in images}
    annotations = []
    for ann in coco["annotations"]:
        if ann["image_id"] in ids:
            annotations.append(ann if ann["iscrowd"] else {k: v for k, v in ann.items() if k != "segmentation"})
    if odd_boxes:
        first, next_id = images[0], max(a["id"] for a in coco["annotations"]) + 1
        w, h = first["width"], first["height"]
        for i, bbox in enumerate([[40, 30, 0, 12], [w - 50, h - 40, 120, 90], [w + 5, 10, 30, 30]]):
            annotations.append({"id": next_id + i, "image_id": first["id"], "category_id": 1, "bbox": bbox})
            annotations[-1].update(iscrowd=0, area=bbox[2] * bbox[3], score=0.5)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": coco["categories"]}))
    return path


def predict_args(model: Path, ann_path: Path, out: Path, *extra: str, image_dir: Path = COCO128_IMAGES) -> list[str]:
    """`sam predict` of a tiny model on the CPU, one process, no workers, results at `out`."""
    return [
        "predict",
        *("--config", str(REPO / "configs" / "sam" / "sam_vit_b.yaml"), "--model.path", str(model)),
        *("--data.predict_ann_path", str(ann_path), "--data.predict_img_dir", str(image_dir)),
        *("--writer.label_dump_path", str(out), "--data.num_workers", "0", "--trainer.accelerator", "cpu"),
        *("--trainer.enable_progress_bar", "false"),
        *extra,
    ]


def sam_command(*args: str) -> list[str]:
    """`python -m sam ...` from the repository root, as a shell would run it."""
    return [sys.executable, "-m", "sam", *args]


def run_sam(*args: str, timeout: int = 300) -> None:
    """Run `python -m sam ...` in a real process (one torch thread); fail with its stderr if it fails."""
    result = subprocess.run(
        sam_command(*args), capture_output=True, text=True, cwd=REPO, env=ONE_THREAD, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]


def kill_when_shards_have(command: list[str], shard_dir: Path, lines: int) -> int:
    """Start `command`, SIGKILL it once its shards hold `lines` finished images; return that count."""
    proc = subprocess.Popen(command, cwd=REPO, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the run finished before it could be killed"
            done = sum(p.read_bytes().count(b"\n") for p in shard_dir.glob("rank*.jsonl"))
            if done >= lines:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return done
            time.sleep(0.005)
        pytest.fail("no results appeared in the shards")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
