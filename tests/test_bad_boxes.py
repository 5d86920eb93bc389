"""Odd boxes (outside the image, empty, sub-pixel, enormous, crowd): no crash, every box accounted for."""

import json

import numpy as np
import pytest
from auto_label_helpers import mal_predict_args, mal_spec_dict, tiny_assets, write_spec
from bad_inputs import CROWD_ANNOTATION
from conftest import TINY_MAL_ARGS

from auto_label.__main__ import cli
from labelkit.masks import segmentation_to_mask
from mal.__main__ import cli_main

# id -> (bbox on a 128 x 96 image, mal_flag expected in the output)
BOXES = {
    1: ([10, 10, 40, 30], None),
    2: ([100, 70, 60, 50], "clipped_box"),  # partly outside, right and bottom
    3: ([-20, -10, 40, 30], "clipped_box"),  # partly outside, left and top
    4: ([200, 10, 20, 20], "outside_image"),
    5: ([-50, -50, 10, 10], "outside_image"),
    6: ([40, 30, 0, 0], "degenerate_box"),
    7: ([40.2, 30.3, 0.4, 0.3], "degenerate_box"),
    8: ([-1e6, -1e6, 2e6, 2e6], "clipped_box"),  # enormous
    9: ([1e30, 1e30, 1e30, 1e30], "outside_image"),  # coordinates far beyond any integer crop box
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def odd_boxes(assets, tmp_path_factory):
    """The first synthetic image with the odd boxes, and a crowd region."""
    data = json.loads(assets["boxes"].read_text())
    image = data["images"][0]
    assert (image["width"], image["height"]) == (128, 96)
    anns = [
        {"id": i, "image_id": image["id"], "category_id": 1, "bbox": b, "iscrowd": 0} for i, (b, _) in BOXES.items()
    ]
    path = tmp_path_factory.mktemp("odd_boxes") / "boxes.json"
    annotations = [*anns, CROWD_ANNOTATION]
    path.write_text(json.dumps({"images": [image], "annotations": annotations, "categories": data["categories"]}))
    return path


def check_every_box(out, odd_boxes) -> dict:
    source = json.loads(odd_boxes.read_text())["annotations"]
    labels = json.loads(out.read_text())["annotations"]
    assert [a["id"] for a in labels] == [a["id"] for a in source]  # each once, in input order
    by_id = {a["id"]: a for a in labels}
    assert by_id[CROWD_ANNOTATION["id"]] == CROWD_ANNOTATION  # untouched
    for ann_id, (bbox, flag) in BOXES.items():
        label = by_id[ann_id]
        assert label["bbox"] == bbox and label.get("mal_flag") == flag
        mask = segmentation_to_mask(label["segmentation"], 96, 128)
        assert label["area"] == int(mask.sum())
        if flag == "outside_image":
            assert label["area"] == 0 and label["mal_score"] == 0
        elif flag == "degenerate_box":
            assert label["area"] >= 1
        else:  # the mask lies in the part of the box inside the image, give or take the one-pixel rim that the
            # original MAL's paste-back (a bilinear resize of the box-masked probabilities) leaves
            x, y, w, h = bbox
            ys, xs = np.nonzero(mask)
            assert len(xs) == 0 or (xs.min() >= max(np.floor(x) - 1, 0) and xs.max() < min(np.ceil(x + w) + 1, 128))
            assert len(ys) == 0 or (ys.min() >= max(np.floor(y) - 1, 0) and ys.max() < min(np.ceil(y + h) + 1, 96))
    return by_id


def test_mal_predict_accounts_for_every_odd_box(assets, odd_boxes, tmp_path, capsys):
    out = tmp_path / "labels.json"
    cli_main(mal_predict_args(assets["mal_checkpoint"], odd_boxes, assets["images"], out))
    check_every_box(out, odd_boxes)
    printed = capsys.readouterr().out
    assert "9 boxes on 1 images (2 degenerate boxes" in printed and "3 boxes were clipped" in printed
    assert "3 boxes outside their image got no mask" in printed
    assert not (tmp_path / "errors.jsonl").exists()


def test_generate_reports_the_odd_boxes(assets, odd_boxes, tmp_path):
    spec = mal_spec_dict(tmp_path, assets["mal_checkpoint"], odd_boxes, assets["images"], num_workers=0)
    report = cli(["generate", "-e", str(write_spec(tmp_path / "spec.yaml", spec))])
    check_every_box(tmp_path / "labels.json", odd_boxes)
    stage = report["stages"][0]
    assert (stage["clipped_boxes"], stage["outside_boxes"], stage["degenerate_boxes"]) == (3, 3, 2)


def test_mal_fit_trains_on_odd_boxes_without_crashing(assets, odd_boxes, tmp_path, caplog):
    caplog.set_level("INFO")
    cli = cli_main(
        [
            "fit",
            *TINY_MAL_ARGS,
            "--data.train_ann_path",
            str(odd_boxes),
            "--data.train_img_dir",
            str(assets["images"]),
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 1
    # 9 non-crowd boxes: the 3 outside the image and the enormous one (area 4e12) are not trained on, as logged
    assert "training on 5 boxes (4 outside the size range [0, 1e+10] or outside their image" in caplog.text
