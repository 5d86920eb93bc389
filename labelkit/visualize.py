"""Draw masks, boxes and labels over images, crop one label into a close-up, and tile overlays into one grid
picture."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np


def color(index: int) -> tuple[int, int, int]:
    """A bright, stable colour for instance `index` (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_overlay(
    image: np.ndarray,
    masks: list[np.ndarray | None] | None = None,
    boxes_xywh: list[list[float]] | None = None,
    labels: list[str] | None = None,
    alpha: float = 0.45,
    colors: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Return a copy of the RGB `image` with translucent masks, their contours, boxes and labels.

    Instance i is drawn in `colors[i]` (e.g. one colour per class), else in `color(i)`; a None mask (a
    box-only label among masked ones) is skipped, so that masks, boxes and colours stay aligned."""
    out = image.copy()
    shade = (lambda i: colors[i]) if colors else color
    for i, mask in enumerate(masks or []):
        if mask is None:
            continue
        m = mask.astype(bool)
        out[m] = (out[m] * (1 - alpha) + np.array(shade(i)) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, shade(i), 1)
    height, width = out.shape[:2]
    for i, box in enumerate(boxes_xywh or []):
        if not np.isfinite(box).all():
            continue
        # corners just outside the image are as good as far outside (1e30 does not fit cv2's int)
        x0, x1 = (int(round(v)) for v in np.clip([box[0], box[0] + box[2]], -1, width))
        y0, y1 = (int(round(v)) for v in np.clip([box[1], box[1] + box[3]], -1, height))
        x, y = x0, y0
        cv2.rectangle(out, (x0, y0), (x1, y1), shade(i), 1)
        if labels and i < len(labels) and labels[i]:
            put_label(out, labels[i], x, y, shade(i))
    return out


def put_label(image: np.ndarray, text: str, x: int, y: int, rgb: tuple[int, int, int]) -> None:
    """Write `text` above (x, y) in `rgb` on a dark outline, readable on any background, moved left where
    it would run off the image's right edge."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    (width, _), _ = cv2.getTextSize(text, font, scale, 1)
    origin = (max(0, min(x + 2, image.shape[1] - width - 1)), max(y - 3, 10))
    cv2.putText(image, text, origin, font, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, font, scale, rgb, 1, cv2.LINE_AA)


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` at `scale`: averaged when shrinking (no aliasing), interpolated when enlarging."""
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`mask` brought to the size of image `like` (nearest pixel: a mask stays binary)."""
    return cv2.resize(mask, (like.shape[1], like.shape[0]), interpolation=cv2.INTER_NEAREST)


def crop_window(
    bbox_xywh, height: int, width: int, margin: float = 0.3, min_side: int = 24
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): a square around a box with `margin` of its longer side on each side, at least
    `min_side` pixels, clipped to the image: enough surroundings to judge the label's edges."""
    x, y, w, h = bbox_xywh
    half = max(max(w, h) * (0.5 + margin), min_side / 2)
    cx, cy = x + w / 2, y + h / 2
    x0 = min(max(0, int(np.floor(cx - half))), width - 1)  # a box outside its image: its nearest edge
    y0 = min(max(0, int(np.floor(cy - half))), height - 1)
    x1, y1 = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def label_thumbnail(
    image: np.ndarray, mask: np.ndarray | None, bbox_xywh, rgb: tuple[int, int, int], side: int
) -> np.ndarray:
    """One label up close: the image around its box, scaled to `side` pixels on the longer side (small
    objects are enlarged), with its mask and box drawn at that size, so that lines stay one pixel wide."""
    x0, y0, x1, y1 = crop_window(bbox_xywh, *image.shape[:2])
    crop = image[y0:y1, x0:x1]
    scale = side / max(crop.shape[:2])
    thumb = resize_image(crop, scale)
    masks = [None if mask is None else resize_mask(mask[y0:y1, x0:x1], thumb)]
    x, y, w, h = bbox_xywh
    box = [(x - x0) * scale, (y - y0) * scale, w * scale, h * scale]
    return draw_overlay(thumb, masks, [box], alpha=0.35, colors=[rgb])


def image_grid(images: list[np.ndarray], columns: int = 4, cell: int = 256) -> np.ndarray:
    """Tile RGB images (letterboxed into `cell` x `cell` squares) into one picture."""
    rows = max(1, -(-len(images) // columns))
    grid = np.zeros((rows * cell, columns * cell, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        scale = cell / max(image.shape[:2])
        h, w = max(1, int(image.shape[0] * scale)), max(1, int(image.shape[1] * scale))
        r, c = divmod(i, columns)
        grid[r * cell : r * cell + h, c * cell : c * cell + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return grid


UP = "__up__"  # stands for ".." in overlay paths


def overlay_path(directory: str | Path, file_name: str, suffix: str = ".jpg") -> Path:
    """Where the overlay of image `file_name` goes: its whole name, folders and extension kept, plus
    `suffix`. Replacing the extension instead would give x.png and x.jpg one overlay, the second
    overwriting the first; appending keeps one overlay per image. A name leading outside its folder (allowed
    by `--allow-outside-image-dir`: absolute, or through "..") still lands inside `directory`: the root is
    dropped and each ".." becomes "__up__"."""
    parts = [UP if part == ".." else part for part in PurePosixPath(file_name.replace("\\", "/")).parts]
    parts = [part for part in parts if part != "/"]
    return Path(directory, *parts[:-1], f"{parts[-1]}{suffix}")


def save_rgb(path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB image; the format follows the extension. cv2 reports a failed write only by its
    return value: raise, so that a missing picture is not silent."""
    jpeg = str(path).lower().endswith((".jpg", ".jpeg"))
    options = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if jpeg else []  # other encoders warn about the key
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), options):
        raise OSError(f"{path}: cannot write the image (unknown extension or unwritable folder)")
