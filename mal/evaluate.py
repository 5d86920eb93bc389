"""Compare any predicted COCO mask file with a ground-truth one: mIoU (paired by annotation id) and mask AP.

Both read the ground truth through `labelkit.evaluation.mask_truth`: crowd regions, box-only records and
records without a usable mask are left out of both (and so are the predictions for them), counted and said.
A metric over nothing is None ("none"), never 0.0 or pycocotools' -1.
"""

from __future__ import annotations

from collections import Counter

import torch
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.table import Table
from torchmetrics.functional import spearman_corrcoef

from labelkit.coco import CocoFile, CocoFormatError, load_coco
from labelkit.evaluation import (
    OF_LEFT_OUT,
    UNKNOWN_IMAGE,
    MaskTruth,
    defined,
    describe_left_out,
    format_value,
    mask_truth,
    run_cocoeval,
    truth_record,
)
from labelkit.masks import box_mask, mask_to_rle, segmentation_to_rle
from labelkit.writers import write_coco
from mal.metrics import summarize_ious

AP_NAMES = ("mask_AP", "mask_AP50", "mask_AP75", "mask_AP_small", "mask_AP_medium", "mask_AP_large")


def check_same_sizes(pred: CocoFile, gt: CocoFile) -> None:
    """Masks of an image are only comparable at one size: the files must agree on every shared image's."""
    for image in pred.images:
        truth = gt.images_by_id.get(image["id"])
        if truth and (truth["width"], truth["height"]) != (image["width"], image["height"]):
            raise CocoFormatError(
                f"{pred.path}: image id {image['id']} is {image['width']}x{image['height']}, "
                f"but {gt.path} says {truth['width']}x{truth['height']}"
            )


def predicted_masks(pred: CocoFile, gt: CocoFile, truth: MaskTruth) -> tuple[dict[int, dict], Counter]:
    """Annotation id -> prediction (with its compressed RLE) of every non-crowd predicted mask that can be
    scored, and the count of those left out: on an image the ground truth lacks (pycocotools' `loadRes`
    refuses them), or for a ground-truth record that is no mask (whose prediction nothing can judge)."""
    kept, left_out = {}, Counter()
    for ann in pred.annotations:
        if ann.get("iscrowd", 0) or "segmentation" not in ann:
            continue
        if ann["image_id"] not in gt.images_by_id:
            left_out[UNKNOWN_IMAGE] += 1
        elif ann["id"] in truth.left_out_ids:
            left_out[OF_LEFT_OUT] += 1
        else:
            image = gt.images_by_id[ann["image_id"]]
            kept[ann["id"]] = {**ann, "rle": segmentation_to_rle(ann["segmentation"], image["height"], image["width"])}
    return kept, left_out


def paired_ious(predictions: dict[int, dict], truth: MaskTruth) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """IoU of each ground-truth instance with the prediction of the same id (0 when none), its class and
    mask area; also counts the instances without a prediction."""
    ious, categories, areas, missing = [], [], [], 0
    for ann, rle, area in truth.instances:
        match = predictions.get(ann["id"])
        if match is None or match["image_id"] != ann["image_id"]:
            missing += 1
            ious.append(0.0)
        else:
            ious.append(float(mask_utils.iou([match["rle"]], [rle], [0])[0][0]))
        categories.append(ann["category_id"])
        areas.append(float(area))
    return torch.tensor(ious), torch.tensor(categories), torch.tensor(areas), missing


def mask_ap(predictions: dict[int, dict], truth: MaskTruth, gt: CocoFile) -> dict[str, float | None]:
    """COCO mask AP (pycocotools) over the instances, crowd regions excusing predictions over them; a
    prediction's score is `score`, else `mal_score`, else `sam_score`, else 1. Masks reach pycocotools as RLE, read like
    the mIoU's, and areas are those of the masks (as the in-training metric computes them)."""
    if not truth.instances:
        return dict.fromkeys(AP_NAMES)
    records = [truth_record(ann, area, segmentation=rle) for ann, rle, area in truth.instances + truth.crowd]
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["rle"],
            "score": a.get("score", a.get("mal_score", a.get("sam_score", 1.0))),
        }
        for a in predictions.values()
    ]
    evaluator = run_cocoeval(gt.images, gt.categories, records, results, "segm")
    return {name: defined(v) for name, v in zip(AP_NAMES, evaluator.stats[:6])}


MASK_SCORE_FIELDS = ("mal_score", "sam_score", "score")  # a mask's own score first, a box's last


def score_ranking(predictions: dict[int, dict], truth: MaskTruth, ious: torch.Tensor) -> dict[str, float | None]:
    """How well the labels' scores (`mal_score`, else `sam_score`, else `score`) rank them by their IoU with
    the real mask, which is what a reviewer checking the lowest-scored labels first relies on:
    `score_spearman`, Spearman's rank correlation of score and IoU, and `worst10_in_lowest10`, the share of
    the 10% lowest-IoU labels found among the 10% lowest-scored (chance: 0.1). None without scores or with
    fewer than 10 scored labels."""
    pairs = []
    for (ann, _, _), iou in zip(truth.instances, ious.tolist()):
        match = predictions.get(ann["id"])
        field = next((f for f in MASK_SCORE_FIELDS if match and f in match), None)
        if field is not None:
            pairs.append((float(match[field]), iou))
    if len(pairs) < 10:
        return {"score_spearman": None, "worst10_in_lowest10": None}
    scores, scored_ious = torch.tensor(pairs, dtype=torch.float64).T
    tenth = len(pairs) // 10
    worst = set(scored_ious.argsort(stable=True)[:tenth].tolist())
    lowest = set(scores.argsort(stable=True)[:tenth].tolist())
    return {
        "score_spearman": spearman_corrcoef(scores, scored_ious).item(),
        "worst10_in_lowest10": len(worst & lowest) / tenth,
    }


def evaluate_files(pred_path: str, gt_path: str) -> dict:
    """mIoU and mask AP of `pred_path` against `gt_path`, the counts of what was left out under
    `left_out`, and `nothing_to_score` (why) where the ground truth holds no instance mask."""
    gt = load_coco(gt_path, check_image_files=False)
    pred = load_coco(pred_path, check_image_files=False)
    check_same_sizes(pred, gt)
    truth = mask_truth(gt)
    predictions, left_out_predictions = predicted_masks(pred, gt, truth)
    ious, categories, areas, missing = paired_ious(predictions, truth)
    metrics = {**summarize_ious(ious, categories, areas), "missing_predictions": missing}
    metrics.update(mask_ap(predictions, truth, gt))
    metrics.update(score_ranking(predictions, truth, ious))
    left_out = +(truth.left_out + left_out_predictions)
    metrics["left_out"] = dict(left_out)
    if not truth.instances:
        metrics["nothing_to_score"] = (
            f"{gt_path} holds no instance mask to score against "
            f"({len(gt.annotations)} records, none a non-crowd record with a usable mask)"
        )
    return metrics


def print_table(metrics: dict, title: str) -> None:
    """The metrics as a table ("none" for a metric over nothing), then what was left out; where there is
    nothing to score, that reason instead of the table."""
    console = Console()
    if "nothing_to_score" not in metrics:
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            if key != "left_out":
                table.add_row(key, format_value(value))
        console.print(table)
    for line in describe_left_out(Counter(metrics["left_out"])):
        console.print(line, highlight=False)
    if "nothing_to_score" in metrics:
        console.print(f"{title}: nothing to score: {metrics['nothing_to_score']}", highlight=False)


def write_box_fill(gt_path: str, out_path: str) -> None:
    """The baseline every box labeler must beat: each non-crowd box's mask is the box itself."""
    gt = load_coco(gt_path, check_image_files=False)

    def annotations():
        for ann in gt.annotations:
            if ann.get("iscrowd", 0):
                continue
            image = gt.images_by_id[ann["image_id"]]
            mask = box_mask(ann["bbox"], image["height"], image["width"])
            yield {**ann, "segmentation": mask_to_rle(mask), "area": int(mask.sum())}

    write_coco(out_path, gt.data, annotations())
