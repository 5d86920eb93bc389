"""Binary masks <-> COCO segmentations (RLE with ASCII counts, polygons with holes)."""

from __future__ import annotations

import math

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


MIN_POLYGON_NUMBERS = 6  # three points: fewer enclose no area
NUMBER_TYPES = {int, float}  # JSON numbers as parsed (not bool)


def usable_polygons(polygons: list) -> list[list]:
    """The pieces of a polygon segmentation that enclose an area (three points or more).

    pycocotools' `frPyObjects` picks the kind of a segmentation from its first piece: a first piece of
    4 numbers (two points) is taken for a box list and fails with a TypeError, `[]` (a box-only record)
    with an IndexError. Pieces of one or two points are dropped here, before pycocotools sees them.
    """
    return [p for p in polygons if len(p) >= MIN_POLYGON_NUMBERS]


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """Compressed RLE of a checked segmentation (see `segmentation_problems`): polygons without their
    pieces of fewer than three points (an empty mask when none is left), uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons: a list of flat [x0, y0, x1, y1, ...] lists
        polygons = usable_polygons(segmentation)
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
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width))


def rle_area(rle: dict) -> int:
    """Number of foreground pixels of a compressed RLE."""
    return int(mask_utils.area(segmentation_to_rle(rle, *rle["size"])))


# Why a record is not mask ground truth (see `instance_rle`).
BOX_ONLY, DEGENERATE_POLYGON, EMPTY_MASK = "box_only", "degenerate_polygon", "empty_mask"


def instance_rle(segmentation, height: int, width: int) -> tuple[dict | None, str | None]:
    """(compressed RLE, None) of a checked ground-truth segmentation, or (None, why it is no mask).

    A record without a segmentation, or with `[]`, is box-only (`BOX_ONLY`); one whose polygons all have
    fewer than three points holds none either (`DEGENERATE_POLYGON`); one whose mask has no pixel
    (collinear points, an RLE of zeros) cannot be matched by any prediction (`EMPTY_MASK`). Scoring such a
    record as an empty mask would count every prediction for it as a miss.
    """
    if not segmentation:
        return None, BOX_ONLY
    if isinstance(segmentation, list) and not usable_polygons(segmentation):
        return None, DEGENERATE_POLYGON
    rle = segmentation_to_rle(segmentation, height, width)
    return (rle, None) if mask_utils.area(rle) else (None, EMPTY_MASK)


def ground_truth_mask(segmentation, height: int, width: int) -> np.ndarray | None:
    """The H x W uint8 mask of a ground-truth record, None where it is no mask (see `instance_rle`)."""
    rle, _ = instance_rle(segmentation, height, width)
    return None if rle is None else mask_utils.decode(rle)


def dropped_polygon_pieces(segmentation) -> int:
    """How many pieces of a polygon segmentation `usable_polygons` drops."""
    return len(segmentation) - len(usable_polygons(segmentation)) if isinstance(segmentation, list) else 0


def rle_string_counts(counts: bytes) -> np.ndarray:
    """The run lengths that COCO's compressed RLE string stands for (pycocotools' `rleFrString`, in numpy).

    Each number is 5 bits a character (offset 48), the 0x20 bit meaning "more follows" and the 0x10 bit
    of the last character its sign; from the fourth run on, each is stored as a difference to the run two
    before. pycocotools decodes such strings unchecked: runs adding up to more than the mask are noticed
    only by `decode` ("Invalid RLE mask representation", naming no file or record), while `iou` and
    `area` score them silently. Raises ValueError for a string that is not of this format.
    """
    codes = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if not codes.size:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise ValueError("holds characters outside the compressed RLE alphabet ('0' to 'o')")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise ValueError("ends in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: no run of a real mask needs more
        raise ValueError("holds a number too large for a run length")
    position = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _within(polygon: list, height: int, width: int) -> bool:
    """Whether every point is finite and within one image size of the image (C-speed builtins: a COCO
    training file holds about a million polygons). A NaN can slip past min/max, never past the sum."""
    xs, ys = polygon[0::2], polygon[1::2]
    total = sum(polygon)  # a float NaN or infinity makes it non-finite; a JSON integer is finite, however long
    return not xs or (
        (type(total) is int or math.isfinite(total))
        and min(xs) >= -width
        and max(xs) <= 2 * width
        and min(ys) >= -height
        and max(ys) <= 2 * height
    )


def _polygon_problems(polygons: list, height: int, width: int) -> list[tuple[str, str]]:
    """Coordinates must be numbers in x, y pairs, finite and within one image size of the image.

    pycocotools' `rleFrPoly` scales coordinates by 5 into C ints and walks every edge pixel by pixel: a
    coordinate such as 1e12 overflows (a segfault), one such as 1e8 makes it allocate gigabytes.
    """
    for i, polygon in enumerate(polygons):
        where = f"segmentation[{i}]"
        if not isinstance(polygon, list):
            return [(where, f"must be a list of x, y coordinates, got {type(polygon).__name__}")]
        if len(polygon) % 2:
            return [(where, f"must hold x, y pairs, got {len(polygon)} numbers")]
        if not set(map(type, polygon)) <= NUMBER_TYPES:
            bad = next(v for v in polygon if type(v) not in NUMBER_TYPES)
            return [(where, f"must hold numbers only, got {bad!r}")]
        if not _within(polygon, height, width):
            for j, (x, y) in enumerate(zip(polygon[0::2], polygon[1::2])):
                if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
                    message = f"point {j} ({x!r}, {y!r}) is not within one image size of the {width}x{height} image"
                    return [(where, message)]
    return []


def _rle_problems(rle: dict, height: int, width: int) -> list[tuple[str, str]]:
    """`size` must be the image's [height, width] and the runs must cover its pixels exactly."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
        return [("segmentation.size", f"must be [height, width], got {size!r}")]
    if size != [height, width]:
        return [("segmentation.size", f"{size} is not the image's [height, width] [{height}, {width}]")]
    if isinstance(counts, list):
        if not all(type(v) is int and v >= 0 for v in counts):
            bad = next(v for v in counts if not (type(v) is int and v >= 0))
            return [("segmentation.counts", f"run lengths must be non-negative integers, got {bad!r}")]
        total = sum(counts)
    elif isinstance(counts, str):
        try:
            runs = rle_string_counts(counts.encode("ascii"))
        except (UnicodeEncodeError, ValueError) as e:
            reason = "holds non-ASCII characters" if isinstance(e, UnicodeEncodeError) else str(e)
            return [("segmentation.counts", f"not a compressed RLE string: {reason}")]
        if (runs < 0).any():
            return [("segmentation.counts", "decodes to a negative run length")]
        total = int(runs.sum())
    else:
        return [("segmentation.counts", f"must be a list of run lengths or an RLE string, got {counts!r:.40}")]
    if total != height * width:
        return [
            (
                "segmentation.counts",
                f"runs cover {total} pixels, but a {height}x{width} mask has {height * width}",
            )
        ]
    return []


def segmentation_problems(segmentation, height: int, width: int) -> list[tuple[str, str]]:
    """(field, message) for each reason a segmentation cannot be read as a mask of a height x width image.

    Run when a file is loaded, so that a bad mask stops a command before any model work, with a message
    naming the record, instead of reaching pycocotools' C code (wrong scores, a crash or a memory blow-up).
    No segmentation (absent, `null` or `[]`: a box-only record) is not a problem.
    """
    if not segmentation:
        return []
    if isinstance(segmentation, list):
        return _polygon_problems(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _rle_problems(segmentation, height, width)
    kinds = "polygons (a list of [x0, y0, x1, y1, ...] lists) or RLE ({size, counts})"
    return [("segmentation", f"must be {kinds}, got {type(segmentation).__name__}")]


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
