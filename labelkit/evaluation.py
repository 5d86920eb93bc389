"""What the evaluation commands score, read one way for `mal evaluate` (masks) and `gdino evaluate` (boxes).

Real ground-truth exports hold records that are no mask ground truth (box-only records, polygons of one
or two points, empty masks) and crowd regions; the mIoU and the AP paths leave out the same records, and
what they leave out is counted and said. pycocotools' COCOeval is driven through `run_cocoeval`, which
works around its treatment of annotation id 0, and its "-1" for a metric over nothing becomes None.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labelkit.coco import CocoFile
from labelkit.masks import BOX_ONLY, DEGENERATE_POLYGON, EMPTY_MASK, dropped_polygon_pieces, instance_rle

CROWD, POLYGON_PIECES = "crowd", "polygon_pieces"
UNKNOWN_IMAGE, OF_LEFT_OUT = "predictions_on_images_not_in_gt", "predictions_of_left_out_records"
UNKNOWN_CLASS = "predictions_of_classes_not_in_gt"

# How the report says each count of `left_out` (the counts are of records, or of pieces where it says so).
LEFT_OUT_WORDS = {
    CROWD: "crowd regions (not instances: they only excuse predictions over them)",
    BOX_ONLY: "box-only records (no segmentation)",
    DEGENERATE_POLYGON: "records whose polygons all have fewer than 3 points",
    EMPTY_MASK: "records whose mask has no pixel",
    POLYGON_PIECES: "polygon pieces of fewer than 3 points, beside real ones (the rest of the mask is scored)",
    UNKNOWN_IMAGE: "predictions on images the ground truth lacks",
    OF_LEFT_OUT: "predictions for ground-truth records left out",
    UNKNOWN_CLASS: "predictions of classes the ground truth lacks",
}


@dataclass
class MaskTruth:
    """The mask ground truth of a COCO file: scorable instances, crowd regions, and what was left out.

    `instances` and `crowd` hold (annotation, compressed RLE, mask area) triples; `left_out_ids` are the
    non-crowd records that are no mask ground truth, whose predictions are left out too.
    """

    instances: list[tuple[dict, dict, int]] = field(default_factory=list)
    crowd: list[tuple[dict, dict, int]] = field(default_factory=list)
    left_out_ids: set[int] = field(default_factory=set)
    left_out: Counter = field(default_factory=Counter)


def mask_truth(coco: CocoFile) -> MaskTruth:
    """Sort the records of a loaded (so checked) COCO file; see `labelkit.masks.instance_rle`."""
    truth = MaskTruth()
    for ann in coco.annotations:
        image = coco.images_by_id[ann["image_id"]]
        segmentation = ann.get("segmentation")
        rle, reason = instance_rle(segmentation, image["height"], image["width"])
        if ann.get("iscrowd", 0):
            truth.left_out[CROWD] += 1
            if rle is not None:
                truth.crowd.append((ann, rle, int(mask_utils.area(rle))))
        elif reason:
            truth.left_out[reason] += 1
            truth.left_out_ids.add(ann["id"])
        else:
            truth.instances.append((ann, rle, int(mask_utils.area(rle))))
            truth.left_out[POLYGON_PIECES] += dropped_polygon_pieces(segmentation)
    return truth


def describe_left_out(left_out: Counter) -> list[str]:
    """One line per non-zero count, for the report."""
    return [f"left out: {LEFT_OUT_WORDS[key]}: {count}" for key, count in left_out.items() if count]


def truth_record(ann: dict, area: float, **fields) -> dict:
    """A ground-truth annotation as COCOeval reads it: `iscrowd` and `area` always set (it indexes both)."""
    record = {k: ann[k] for k in ("image_id", "category_id", "bbox")}
    return {**record, "iscrowd": int(ann.get("iscrowd", 0)), "area": float(area), **fields}


def _coco_api(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    api = COCO()
    api.dataset = {"images": images, "categories": categories, "annotations": annotations}
    api.createIndex()
    return api


def run_cocoeval(
    images: list[dict],
    categories: list[dict],
    truth: list[dict],
    results: list[dict],
    iou_type: str,
    img_ids: list[int] | None = None,
    cat_ids: list[int] | None = None,
) -> COCOeval:
    """COCOeval of `results` against `truth` (records without ids), evaluated, accumulated and summarized.

    The ground truth gets ids 1..N here, whatever the file's ids: COCOeval records a detection's match as
    the matched ground truth's id (`dtMatches`) and `accumulate` counts it as a true positive only where
    that id is non-zero, so a record with id 0 can never be matched (a perfect prediction of two objects,
    ids 0 and 1, scores AP 0.50). Results get ids from `loadRes`, from 1. With no result, every record is
    missed (AP 0), which `loadRes` cannot express: it indexes the first result.
    """
    numbered = [{**record, "id": i} for i, record in enumerate(truth, start=1)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = _coco_api(images, categories, numbered)
        dt = gt.loadRes(results) if results else _coco_api(images, categories, [])
        evaluator = COCOeval(gt, dt, iou_type)
        if img_ids is not None:
            evaluator.params.imgIds = img_ids
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def defined(value: float) -> float | None:
    """A COCOeval figure, None where pycocotools writes -1: no ground truth to average over."""
    return None if value < 0 else float(value)


def format_value(value) -> str:
    """A metric for a table: "none" for a metric over nothing, 4 decimals for a score."""
    if value is None:
        return "none"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
