"""`sam predict` end to end on coco128 images with a tiny random model of each box-promptable family."""

import json

import pytest
from bad_inputs import run_module
from conftest import COCO128
from sam_helpers import coco128_boxes, model_dir, needs_coco128, predict_args

from labelkit.coco import load_coco
from labelkit.masks import box_mask, segmentation_to_mask
from mal.evaluate import evaluate_files
from sam.__main__ import cli_main
from sam.errors import SamError
from sam.model import load_box_segmenter
from sam.tiny import BOX_FAMILIES, save_tiny

pytestmark = needs_coco128


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    return coco128_boxes(tmp_path_factory.mktemp("sam_boxes") / "boxes.json", num_images=3)


@pytest.mark.parametrize("family", BOX_FAMILIES)
def test_predict_writes_a_mask_for_every_box_following_mals_contract(family, boxes, tmp_path_factory, tmp_path):
    out = tmp_path / "masks.json"
    cli = cli_main(predict_args(model_dir(tmp_path_factory, family), boxes, out))
    assert type(cli.model.segmenter.family).__name__ == "BoxFamily" and cli.model.segmenter.family.name == family
    source, result = json.loads(boxes.read_text()), json.loads(out.read_text())
    assert result["images"] == source["images"] and result["categories"] == source["categories"]
    load_coco(out, check_image_files=False)  # valid COCO, masks included
    by_id = {a["id"]: a for a in result["annotations"]}
    assert sorted(by_id) == sorted(a["id"] for a in source["annotations"])  # every box exactly once
    assert len(by_id) == len(result["annotations"])
    sizes = {im["id"]: (im["height"], im["width"]) for im in source["images"]}
    for ann in source["annotations"]:
        out_ann = by_id[ann["id"]]
        if ann["iscrowd"]:
            assert out_ann == ann  # passed through untouched
            continue
        for key in ("image_id", "category_id", "bbox", "iscrowd", "score"):
            assert out_ann.get(key) == ann.get(key)
        mask = segmentation_to_mask(out_ann["segmentation"], *sizes[ann["image_id"]])
        assert out_ann["segmentation"]["size"] == list(sizes[ann["image_id"]])
        assert out_ann["area"] == int(mask.sum()) and isinstance(out_ann["sam_score"], float)
        assert "mal_score" not in out_ann
    zero_width, clipped, outside = (by_id[i] for i in sorted(by_id)[-3:])
    height, width = sizes[zero_width["image_id"]]
    assert zero_width["sam_flag"] == "degenerate_box" and zero_width["sam_score"] == 0.0
    box = segmentation_to_mask(zero_width["segmentation"], height, width)
    assert (box == box_mask(zero_width["bbox"], height, width)).all()  # MAL's rule: the box mask
    assert clipped["sam_flag"] == "clipped_box" and outside["sam_flag"] == "outside_image"
    assert outside["area"] == 0 and outside["sam_score"] == 0.0
    flagged = sum("sam_flag" in a for a in result["annotations"])
    assert flagged == 3

    again = tmp_path / "again.json"
    cli_main(predict_args(model_dir(tmp_path_factory, family), boxes, again, "--data.batch_size", "1"))
    assert again.read_bytes() == out.read_bytes()  # batch size and reruns change nothing


def test_mal_evaluate_scores_sam_masks_against_the_ground_truth(boxes, tmp_path_factory, tmp_path):
    out = tmp_path / "masks.json"
    cli_main(predict_args(model_dir(tmp_path_factory, "sam"), boxes, out, "--model.multimask", "single"))
    coco = json.loads(boxes.read_text())
    original = json.loads((COCO128 / "annotations" / "instances.json").read_text())
    ids = {im["id"] for im in coco["images"]}
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({**coco, "annotations": [a for a in original["annotations"] if a["image_id"] in ids]}))
    metrics = evaluate_files(str(out), str(truth))
    assert metrics["num_instances"] > 0 and metrics["missing_predictions"] == 0
    assert 0 <= metrics["mIoU"] <= 1


def test_a_model_that_is_not_box_promptable_is_refused(tmp_path):
    path = save_tiny(tmp_path / "sam", "sam")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "grounding-dino"}))
    with pytest.raises(SamError, match="holds a 'grounding-dino' model; box prompts need one of sam, sam_hq"):
        load_box_segmenter(str(path))
    with pytest.raises(SamError, match="has no config.json"):
        load_box_segmenter(str(tmp_path))
    with pytest.raises(SamError, match="is not a directory"):
        load_box_segmenter(str(tmp_path / "absent"))


def test_cli_reports_bad_input_without_traceback(boxes, tmp_path_factory, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": "x", "name": "a"}]}))
    result = run_module("sam", *predict_args(tmp_path / "no_model", bad, tmp_path / "out.json"))
    assert result.returncode == 2, result.stderr
    assert "categories[0] (id 'x'): field 'id': must be an integer" in result.stderr  # before the model
    assert "Traceback" not in result.stderr
    result = run_module("sam", *predict_args(tmp_path / "no_model", boxes, tmp_path / "out.json"))
    assert result.returncode == 2 and "no_model is not a directory" in result.stderr
    result = run_module("sam", "fit")
    assert result.returncode == 2 and "usage: python -m sam {predict,label}" in result.stderr
