"""Binary masks <-> COCO segmentations (RLE with ASCII counts, polygons with holes)."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode an H x W mask as COCO compressed RLE, counts as an ASCII string."""
    return masks_to_rles(mask[None])[0]


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """Encode N x H x W masks at once (one C call), each as `mask_to_rle` would."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def _to_compressed(segmentation, height: int, width: int) -> dict:
    if isinstance(segmentation, list):  # polygons: a list of flat [x0, y0, x1, y1, ...] lists
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        counts = segmentation["counts"]
        return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Decode any COCO segmentation (polygons, uncompressed or compressed RLE) to an H x W uint8 mask."""
    return mask_utils.decode(_to_compressed(segmentation, height, width))


def rle_area(rle: dict) -> int:
    """Number of foreground pixels of a compressed RLE."""
    return int(mask_utils.area(_to_compressed(rle, *rle["size"])))


def _splice_hole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join a hole to its outer contour through a zero-width bridge, so that one polygon encloses it."""
    distances = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    hole_from_j = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], hole_from_j, outer[i:]])


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Trace a mask as COCO polygons; holes are spliced into their outer contour, not lost."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    polygons = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:  # a hole: handled with its parent
            continue
        outer = contour[:, 0, :].astype(np.float64)
        child = hierarchy[index][2]
        while child != -1:
            outer = _splice_hole(outer, contours[child][:, 0, :].astype(np.float64))
            child = hierarchy[child][0]
        if len(outer) >= 3:
            polygons.append([float(v) for v in outer.reshape(-1)])
    return polygons


def box_mask(bbox_xywh, height: int, width: int) -> np.ndarray:
    """The pixels a box covers (floor/ceil to whole pixels, clipped, at least one pixel inside the image)."""
    x, y, w, h = bbox_xywh
    x0 = min(max(int(np.floor(x)), 0), width - 1)
    y0 = min(max(int(np.floor(y)), 0), height - 1)
    x1 = min(max(int(np.ceil(x + w)), x0 + 1), width)
    y1 = min(max(int(np.ceil(y + h)), y0 + 1), height)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
