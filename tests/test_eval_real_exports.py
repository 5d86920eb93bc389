"""Evaluation against real ground-truth exports (issue 13, kinds 1 and 2): the right values, not only no crash.

Each kind is built small here; the real failing cases in ../shared/cases/2026-11-29 are re-run when present.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from bad_inputs import run_module
from conftest import REPO, SHARED
from pycocotools import mask as mask_utils

from gdino.evaluate import evaluate as gdino_evaluate
from gdino.evaluate import format_report
from labelkit.coco import CocoFormatError
from labelkit.masks import mask_to_rle, segmentation_to_mask
from mal.evaluate import evaluate_files, print_table
from mal.metrics import MaskIoUMetric

CASES = SHARED / "cases" / "2026-11-29"
HEIGHT, WIDTH = 30, 40
# results that must not change with what is left out
SCORES = ("mIoU", "mIoU_class", "mIoU_small", "mIoU_medium", "mIoU_large", "num_instances", "missing_predictions")
SCORES += ("mask_AP", "mask_AP50", "mask_AP75", "mask_AP_small", "mask_AP_medium", "mask_AP_large")


def square(x0, y0, x1, y1) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def record(ann_id, image_id, segmentation, bbox=(5, 5, 10, 10), iscrowd=0, category_id=1) -> dict:
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "iscrowd": iscrowd}
    return ann if segmentation is None else {**ann, "segmentation": segmentation}


def coco(annotations, image_ids=(1, 2)) -> dict:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": WIDTH, "height": HEIGHT} for i in image_ids]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}


def predictions(gt: dict, masks: dict[int, np.ndarray] | None = None, image_ids=None) -> dict:
    """One RLE prediction per non-crowd ground-truth record: its own mask (perfect) unless given in `masks`."""
    masks = masks or {}
    annotations = []
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        mask = masks.get(ann["id"])
        if mask is None:
            mask = segmentation_to_mask(ann.get("segmentation") or [], HEIGHT, WIDTH)
        annotations.append({**ann, "segmentation": mask_to_rle(mask), "mal_score": 1.0})
    return coco(annotations, image_ids or [im["id"] for im in gt["images"]])


def write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def evaluate(tmp_path, pred: dict, gt: dict) -> dict:
    return evaluate_files(write(tmp_path / "pred.json", pred), write(tmp_path / "gt.json", gt))


def blob(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


# ------------------------------------------------------------------------------------------- annotation id 0
@pytest.mark.parametrize("first_id", [0, 1, -5])
def test_perfect_prediction_scores_ap_1_whatever_the_first_annotation_id(tmp_path, first_id):
    gt = coco([record(first_id, 1, [square(2, 2, 20, 20)]), record(first_id + 1, 2, [square(10, 5, 30, 25)])])
    metrics = evaluate(tmp_path, predictions(gt), gt)
    assert metrics["mask_AP"] == metrics["mask_AP50"] == metrics["mask_AP75"] == pytest.approx(1.0)
    assert metrics["mIoU"] == 1.0 and metrics["num_instances"] == 2 and metrics["missing_predictions"] == 0


def test_gdino_box_ap_is_1_for_a_perfect_labelling_with_ids_from_0(tmp_path):
    gt = coco([record(0, 1, None, (2, 2, 18, 18)), record(1, 2, None, (10, 5, 20, 20))])
    pred = {**gt, "annotations": [{**a, "score": 0.9} for a in gt["annotations"]]}
    metrics = gdino_evaluate(write(tmp_path / "pred.json", pred), write(tmp_path / "gt.json", gt))
    assert metrics["AP"] == metrics["AP50"] == metrics["AR100"] == pytest.approx(1.0)
    assert metrics["per_class"]["thing"]["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------- polygons of 1 or 2 points
def test_polygons_of_one_or_two_points_are_ignored_and_counted(tmp_path):
    real = [square(2, 2, 20, 20)]
    gt = coco(
        [
            record(1, 1, real),
            record(2, 1, [[8.0, 8.0, 16.0, 16.0]]),  # two points alone: no mask
            record(3, 2, [[5.0, 5.0], square(10, 5, 30, 25)]),  # one point before the real polygon
            record(4, 2, [square(1, 1, 6, 6), [3.0, 3.0, 4.0, 4.0]]),  # two points after it
        ]
    )
    pred = predictions(gt, masks={2: blob(0, 0, 40, 30)})  # whatever is predicted for record 2 is not judged
    metrics = evaluate(tmp_path, pred, gt)
    assert metrics["num_instances"] == 3 and metrics["mIoU"] == 1.0 and metrics["mask_AP"] == pytest.approx(1.0)
    assert metrics["left_out"] == {"degenerate_polygon": 1, "polygon_pieces": 2, "predictions_of_left_out_records": 1}


def test_miou_and_ap_read_a_fragment_first_polygon_the_same_way(tmp_path):
    """A prediction covering 60% of the real polygon: that IoU in the mIoU, and AP50 1 but AP75 0."""
    polygon = square(0, 0, 20, 20)
    gt = coco([record(1, 1, [[5.0, 5.0, 9.0, 9.0], polygon])], image_ids=(1,))
    truth = segmentation_to_mask([polygon], HEIGHT, WIDTH)
    part = truth.copy()
    part[:, 13:] = 0
    metrics = evaluate(tmp_path, predictions(gt, masks={1: part}), gt)
    assert metrics["mIoU"] == pytest.approx(part.sum() / truth.sum()) and 0.5 < metrics["mIoU"] < 0.75
    assert metrics["mask_AP50"] == pytest.approx(1.0) and metrics["mask_AP75"] == 0.0


# --------------------------------------------------------------------------------------- box-only records
def test_box_only_records_are_absent_from_the_miou_denominator(tmp_path):
    masked = [record(1, 1, [square(2, 2, 20, 20)]), record(2, 2, [square(10, 5, 30, 25)])]
    box_only = [record(3, 3, []), record(4, 3, None, (1, 1, 5, 5))]  # `"segmentation": []`, and no key at all
    gt = coco(masked + box_only, image_ids=(1, 2, 3))
    wrong = blob(0, 0, 40, 30)
    metrics = evaluate(tmp_path, predictions(gt, masks={3: wrong, 4: wrong}), gt)
    assert (
        metrics["num_instances"] == 2 and metrics["mIoU"] == 1.0 and metrics["mask_AP"] == pytest.approx(1.0)
    )  # not 0.5
    assert metrics["left_out"] == {"box_only": 2, "predictions_of_left_out_records": 2}
    without = evaluate(tmp_path, predictions(gt, masks={3: wrong, 4: wrong}), coco(masked, image_ids=(1, 2)))
    assert {k: without[k] for k in SCORES} == {k: metrics[k] for k in SCORES}
    assert without["left_out"] == {"predictions_on_images_not_in_gt": 2}


def test_empty_ground_truth_masks_are_left_out_and_counted(tmp_path):
    empty_rle = {"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}
    gt = coco([record(1, 1, [square(2, 2, 20, 20)]), record(2, 1, empty_rle)], image_ids=(1,))
    metrics = evaluate(tmp_path, predictions(gt), gt)
    assert metrics["num_instances"] == 1 and metrics["mIoU"] == 1.0 and metrics["left_out"]["empty_mask"] == 1


def test_predictions_on_images_the_ground_truth_lacks_are_left_out_and_counted(tmp_path, capsys):
    gt = coco([record(1, 1, [square(2, 2, 20, 20)])], image_ids=(1,))
    pred = predictions(gt)
    pred["images"].append({"id": 9, "file_name": "9.jpg", "width": WIDTH, "height": HEIGHT})
    pred["annotations"].append({**pred["annotations"][0], "id": 2, "image_id": 9})
    metrics = evaluate(tmp_path, pred, gt)
    assert metrics["mask_AP"] == pytest.approx(1.0) and metrics["left_out"] == {"predictions_on_images_not_in_gt": 1}
    print_table(metrics, "t")
    assert "left out: predictions on images the ground truth lacks: 1" in capsys.readouterr().out


def test_image_of_another_size_in_the_predictions_is_refused(tmp_path):
    gt = coco([record(1, 1, [square(2, 2, 20, 20)])], image_ids=(1,))
    pred = predictions(gt)
    pred["images"][0]["width"] = WIDTH * 2
    pred["annotations"][0]["segmentation"] = mask_to_rle(np.zeros((HEIGHT, WIDTH * 2), np.uint8))
    with pytest.raises(CocoFormatError, match=f"image id 1 is {WIDTH * 2}x{HEIGHT}, but .*gt.json says"):
        evaluate(tmp_path, pred, gt)


# ------------------------------------------------------------------------------------- nothing to score
def test_a_file_with_nothing_scorable_gives_no_number(tmp_path, capsys):
    crowd_rle = {"size": [HEIGHT, WIDTH], "counts": [40, 200, HEIGHT * WIDTH - 240]}
    gt = coco([record(1, 1, crowd_rle, iscrowd=1), record(2, 2, [square(2, 2, 9, 9)], iscrowd=1)])
    pred = coco([{**a, "iscrowd": 0, "segmentation": mask_to_rle(blob(0, 0, 9, 9))} for a in gt["annotations"]])
    metrics = evaluate(tmp_path, pred, gt)
    assert all(metrics[k] is None for k in SCORES if k not in ("num_instances", "missing_predictions"))
    assert metrics["num_instances"] == 0 and metrics["left_out"] == {"crowd": 2}
    assert "holds no instance mask" in metrics["nothing_to_score"]
    print_table(metrics, "t")
    out = capsys.readouterr().out
    assert "nothing to score" in out and "0.0000" not in out
    assert not re.search(r"(?<![\w-])-1(?!\d)", out)  # no -1 as a value (a tmp path such as pytest-147 may hold "-1")
    gdino = gdino_evaluate(tmp_path / "pred.json", tmp_path / "gt.json")
    assert gdino["AP"] is None and "nothing_to_score" in gdino
    assert "nothing to score" in format_report(gdino) and "0.000" not in format_report(gdino)
    for command in ("mal", "gdino"):  # the commands say so and exit 2, as for any input that cannot be scored
        done = run_module(command, "evaluate", "--pred", str(tmp_path / "pred.json"), "--gt", str(tmp_path / "gt.json"))
        assert done.returncode == 2 and "nothing to score" in done.stderr and "Traceback" not in done.stderr


def test_a_size_bucket_without_instances_is_none_not_a_number(tmp_path):
    gt = coco([record(1, 1, [square(2, 2, 20, 20)])], image_ids=(1,))
    metrics = evaluate(tmp_path, predictions(gt), gt)
    assert metrics["mIoU_small"] == 1.0 and metrics["mask_AP_small"] == pytest.approx(1.0)
    assert metrics["mIoU_large"] is None and metrics["mask_AP_large"] is None


def test_validation_mious_over_no_instance_are_not_logged_as_numbers():
    metric = MaskIoUMetric()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns of a compute before any update
        assert metric.compute() == {"num_instances": torch.tensor(0.0)}
    metric.update(torch.tensor([0.5]), torch.tensor([1]), torch.tensor([100.0]))
    assert metric.compute() == {
        "mIoU": torch.tensor(0.5),
        "mIoU_class": torch.tensor(0.5),
        "mIoU_small": torch.tensor(0.5),
        "num_instances": torch.tensor(1.0),
    }


def test_gdino_counts_the_detections_it_leaves_out(tmp_path):
    gt = coco([record(1, 1, None, (2, 2, 18, 18))], image_ids=(1,))
    pred = coco([{**a, "score": 0.9} for a in gt["annotations"]], image_ids=(1, 2))
    pred["annotations"].append({**pred["annotations"][0], "id": 2, "image_id": 2})
    pred["categories"].append({"id": 5, "name": "other"})
    pred["annotations"].append({**pred["annotations"][0], "id": 3, "category_id": 5})
    metrics = gdino_evaluate(write(tmp_path / "pred.json", pred), write(tmp_path / "gt.json", gt))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APl"] is None and metrics["num_detections"] == 1
    assert metrics["left_out"] == {"predictions_on_images_not_in_gt": 1, "predictions_of_classes_not_in_gt": 1}
    report = format_report(metrics)
    assert "APl none" in report and "left out: predictions on images the ground truth lacks: 1" in report


# ------------------------------------------------------------------ masks checked when a file is loaded
@pytest.mark.parametrize(
    "segmentation, field, words",
    [
        ({"size": [HEIGHT, WIDTH], "counts": [10, 20, HEIGHT * WIDTH]}, "segmentation.counts", "runs cover 1230"),
        ({"size": [HEIGHT + 1, WIDTH], "counts": [(HEIGHT + 1) * WIDTH]}, "segmentation.size", "[31, 40] is not"),
        ({"size": [HEIGHT, WIDTH], "counts": "0\x7f"}, "segmentation.counts", "not a compressed RLE"),
        ({"size": [HEIGHT, WIDTH], "counts": [5, -1, 1196]}, "segmentation.counts", "non-negative"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0]], "segmentation[0]", "x, y pairs"),
        ([square(2, 2, 20, 20), [1.0, "2", 3.0, 4.0, 5.0, 6.0]], "segmentation[1]", "numbers only"),
        ([[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]], "segmentation[0]", "point 1 (nan, 4.0)"),
        ([[1.0, 2.0, 1e12, 4.0, 5.0, 6.0]], "segmentation[0]", "not within one image size"),
        ("polygon", "segmentation", "must be polygons"),
    ],
)
@pytest.mark.parametrize("side", ["gt", "pred"])
def test_a_bad_mask_is_refused_at_load_naming_file_record_and_field(tmp_path, segmentation, field, words, side):
    good = coco([record(7, 1, [square(2, 2, 20, 20)])], image_ids=(1,))
    bad = coco([record(7, 1, segmentation)], image_ids=(1,))
    gt, pred = (bad, predictions(good)) if side == "gt" else (good, bad)
    with pytest.raises(CocoFormatError) as info:
        evaluate(tmp_path, pred, gt)
    message = str(info.value)
    assert f"{side}.json" in message and f"annotations[0] (id 7): field '{field}'" in message and words in message


def test_a_compressed_rle_whose_runs_overrun_is_refused(tmp_path):
    gt = coco([record(7, 1, [square(2, 2, 20, 20)])], image_ids=(1,))
    pred = predictions(gt)
    # pycocotools compresses any runs unchecked: [10, 20, 1200] covers 30 pixels more than 30 x 40
    compressed = mask_utils.frPyObjects({"size": [HEIGHT, WIDTH], "counts": [10, 20, HEIGHT * WIDTH]}, HEIGHT, WIDTH)
    pred["annotations"][0]["segmentation"] = {"size": [HEIGHT, WIDTH], "counts": compressed["counts"].decode()}
    with pytest.raises(CocoFormatError, match=r"(?s)pred.json.*\(id 7\): field 'segmentation.counts': runs cover 1230"):
        evaluate(tmp_path, pred, gt)


BOUNDED_EVALUATE = """
import resource, sys
from mal.__main__ import main
size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
limit = size * 1024 + 2**30  # what the imports took, plus 1 GiB: far less than rasterising the polygons
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["mal", "evaluate", "--pred", sys.argv[1], "--gt", sys.argv[2]]
main()
"""


def test_huge_coordinate_polygons_are_refused_in_bounded_memory(tmp_path):
    """1e8 made pycocotools' polygon rasteriser allocate gigabytes, 1e12 overflowed its ints (a segfault)."""
    polygons = {7: square(2, 2, 1e8, 1e8), 8: square(2, 2, 1e12, 20)}
    gt = coco([record(i, 1, [p]) for i, p in polygons.items()], image_ids=(1,))
    pred = coco([record(i, 1, mask_to_rle(blob(0, 0, 9, 9))) for i in polygons], image_ids=(1,))
    paths = write(tmp_path / "pred.json", pred), write(tmp_path / "gt.json", gt)
    command = [sys.executable, "-c", BOUNDED_EVALUATE, *paths]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "gt.json" in run.stderr and "Traceback" not in run.stderr
    for i in polygons:
        assert f"(id {i}): field 'segmentation[0]': point 1" in run.stderr
    assert run.stderr.count("not within one image size") == 2


def test_the_bound_is_one_that_rasterising_the_polygon_breaks():
    """What the refusal prevents: pycocotools itself, under a 1 GiB bound, dies on the 1e8 polygon."""
    code = (
        "import resource\nfrom pycocotools import mask\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
        f"mask.frPyObjects([{square(2, 2, 1e8, 1e8)}], {HEIGHT}, {WIDTH})\nprint('rasterised')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "rasterised" not in run.stdout


# ------------------------------------------------------------------- the real cases, where ../shared has them
def case(folder: str, pred: str, gt: str) -> dict:
    if not CASES.is_dir():
        pytest.skip(f"{CASES} is absent (the shared real-world cases); the kinds are covered above")
    return evaluate_files(str(CASES / folder / pred), str(CASES / folder / gt))


def test_case_annotation_id_zero():
    from_0 = case("eval-annotation-id-zero", "pred.json", "gt.json")
    from_1 = case("eval-annotation-id-zero", "pred_ids_from_1.json", "gt_ids_from_1.json")
    assert from_0 == from_1 and from_0["mask_AP"] == pytest.approx(1.0) and from_0["mIoU"] == 1.0


@pytest.mark.parametrize(
    "suffix, instances, left_out", [("", 1, "degenerate_polygon"), ("_fragment_first", 2, "polygon_pieces")]
)
def test_case_two_point_polygon(suffix, instances, left_out):
    metrics = case("eval-two-point-polygon", f"pred{suffix}.json", f"gt{suffix}.json")
    assert metrics["num_instances"] == instances and metrics["mIoU"] == 1.0 and metrics["mask_AP"] == pytest.approx(1.0)
    assert metrics["left_out"][left_out] == 1


def test_case_box_only_records():
    metrics = case("eval-box-only-records", "pred.json", "gt.json")
    without = case("eval-box-only-records", "pred.json", "gt_without_box_only.json")
    assert {k: metrics[k] for k in SCORES} == {k: without[k] for k in SCORES}
    assert metrics["num_instances"] == 2 and metrics["mIoU"] == 1.0 and metrics["left_out"]["box_only"] == 1


@pytest.mark.parametrize("pred, gt", [("pred.json", "gt.json"), ("pred_compressed_overrun.json", "gt_clean.json")])
def test_case_mask_rle_overrun(pred, gt):
    with pytest.raises(CocoFormatError) as info:
        case("mask-rle-overrun", pred, gt)
    bad = gt if gt == "gt.json" else pred
    message = str(info.value)
    assert bad in message and "(id 1817255): field 'segmentation.counts'" in message
    assert "runs cover 355920 pixels, but a 478x640 mask has 305920" in message


def test_case_all_crowd():
    metrics = case("eval-all-crowd", "pred.json", "gt.json")
    assert metrics["mIoU"] is None and metrics["mask_AP"] is None and metrics["left_out"] == {"crowd": 2}
    assert "nothing_to_score" in metrics
