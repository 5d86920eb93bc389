"""Same weights, same masks: our MAL against the original NVlabs code's own numbers.

../shared/parity/mal holds a tiny random-weight checkpoint that the original code built and saved, 4 coco128
boxes, and what the original produced for each (crop box, crop, backbone features, logits, RLE mask). Its
README gives the tolerances checked here: crop boxes and crops equal, logits within 1e-4, mask IoU >= 0.999.
The checkpoint goes through our real entry points: `python -m mal predict --ckpt_path`, `--model.pretrained_path`
and `auto_label generate` with `mal.checkpoint`.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import COCO128, SHARED

from auto_label.__main__ import cli
from labelkit.coco import load_coco
from labelkit.masks import segmentation_to_mask
from mal.__main__ import cli_main
from mal.backbone import feature_map
from mal.checkpoint import with_architecture
from mal.data import ImageBoxesDataset
from mal.module import MALModule, box_areas

PARITY = SHARED / "parity" / "mal"
pytestmark = pytest.mark.skipif(
    not (PARITY / "tiny_original.ckpt").is_file() or not COCO128.is_dir(),
    reason="needs ../shared/parity/mal (the original MAL's outputs) and ../shared/data/coco128",
)
CHECKPOINT = PARITY / "tiny_original.ckpt"
CROP_SIZE = 256  # the fixture's crop size (its README: "Settings")


@pytest.fixture(scope="module")
def expected() -> dict:
    return {
        "annotations": json.loads((PARITY / "expected.json").read_text())["annotations"],
        "tensors": torch.load(PARITY / "expected_tensors.pt", weights_only=True),
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_masks_match(labels_path: Path, expected: dict) -> None:
    """Every box of the output has IoU >= 0.999 with the original's mask."""
    labels = json.loads(labels_path.read_text())
    by_id = {a["id"]: a for a in labels["annotations"]}
    assert set(map(int, expected["annotations"])) == set(by_id)
    for ann_id, original in expected["annotations"].items():
        height, width = original["segmentation"]["size"]
        ours = segmentation_to_mask(by_id[int(ann_id)]["segmentation"], height, width).astype(bool)
        theirs = segmentation_to_mask(original["segmentation"], height, width).astype(bool)
        assert mask_iou(ours, theirs) >= 0.999, (ann_id, mask_iou(ours, theirs))


def test_every_stage_matches_the_original(expected):
    """Crop box and crop equal, features and logits within 1e-4, masks IoU >= 0.999, in fp32 on a CPU."""
    args = with_architecture({"crop_size": CROP_SIZE, "pretrained_path": str(CHECKPOINT)}, CHECKPOINT)
    module = MALModule(**args).eval()
    dataset = ImageBoxesDataset(load_coco(PARITY / "boxes.json", COCO128 / "images"), (0.6, 0.6), CROP_SIZE)
    checked = 0
    for sample in (dataset[i] for i in range(len(dataset))):
        with torch.inference_mode():
            images = module.normalise(sample["crops"])
            features = feature_map(module.student.backbone, images)
            logits = module.mask_logits(images, box_areas(sample["boxes"]))
            results = module.predict_images([sample])[0]
        height, width = sample["image"].shape[1:]
        for j, index in enumerate(sample["ann_indices"]):
            ann_id = dataset.coco.annotations[index]["id"]
            original, tensors = expected["annotations"][str(ann_id)], expected["tensors"][ann_id]
            assert sample["crop_boxes"][j].tolist() == original["crop_box"]
            assert torch.equal(sample["crops"][j].permute(1, 2, 0), tensors["crop"])
            torch.testing.assert_close(features[j], tensors["features"], rtol=0, atol=1e-4)
            torch.testing.assert_close(logits[j], tensors["logits"], rtol=0, atol=1e-4)
            ours = np.zeros((height, width), bool)
            r = results[j]
            ours[r["y0"] : r["y0"] + r["mask"].shape[0], r["x0"] : r["x0"] + r["mask"].shape[1]] = r["mask"]
            theirs = segmentation_to_mask(original["segmentation"], height, width).astype(bool)
            assert mask_iou(ours, theirs) >= 0.999, ann_id
            checked += 1
    assert checked == 4


COMMON = [
    *("--config", "configs/mal/coco128_cpu.yaml", "--data.crop_size", str(CROP_SIZE), "--model.mask_thres", "0.1"),
    *("--data.predict_ann_path", str(PARITY / "boxes.json"), "--data.predict_img_dir", str(COCO128 / "images")),
    *("--data.num_workers", "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"),
]


@pytest.mark.parametrize("weights", ["--ckpt_path", "--model.pretrained_path"])
def test_mal_predict_labels_the_fixture_like_the_original(expected, tmp_path, weights, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "labels.json"
    cli_main(["predict", *COMMON, weights, str(CHECKPOINT), "--writer.label_dump_path", str(out)])
    assert_masks_match(out, expected)


def test_auto_label_generate_labels_the_fixture_like_the_original(expected, tmp_path):
    spec = {
        "autolabel_type": "mal",
        "results_dir": str(tmp_path / "out"),
        "num_workers": 0,
        "mal": {
            "checkpoint": str(CHECKPOINT),
            "dataset": {"crop_size": CROP_SIZE},
            "inference": {"ann_path": str(PARITY / "boxes.json"), "img_dir": str(COCO128 / "images")},
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    report = cli(["generate", "-e", str(path)])
    assert report["stages"][0]["output"].endswith("labels.json")
    assert_masks_match(Path(report["stages"][0]["output"]), expected)
