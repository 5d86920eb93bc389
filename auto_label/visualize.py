"""Draw masks, boxes and labels over images, and tile overlays into one grid picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def color(index: int) -> tuple[int, int, int]:
    """A bright, stable colour for instance `index` (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_overlay(
    image: np.ndarray,
    masks: list[np.ndarray] | None = None,
    boxes_xywh: list[list[float]] | None = None,
    labels: list[str] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Return a copy of the RGB `image` with translucent masks, their contours, boxes and labels."""
    out = image.copy()
    for i, mask in enumerate(masks or []):
        m = mask.astype(bool)
        out[m] = (out[m] * (1 - alpha) + np.array(color(i)) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color(i), 1)
    for i, box in enumerate(boxes_xywh or []):
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(out, (x, y), (x + w, y + h), color(i), 1)
        if labels and i < len(labels) and labels[i]:
            cv2.putText(out, labels[i], (x + 2, max(y - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color(i), 1)
    return out


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


def overlay_path(directory: str | Path, file_name: str, suffix: str = ".jpg") -> Path:
    """Where the overlay of image `file_name` goes: its whole name, folders and extension kept, plus
    `suffix`. Replacing the extension instead would give x.png and x.jpg one overlay, the second
    overwriting the first; appending keeps one overlay per image."""
    return Path(directory) / f"{file_name}{suffix}"


def save_rgb(path, image: np.ndarray) -> None:
    """Write an RGB image; the format follows the extension. cv2 reports a failed write only by its
    return value: raise, so that a missing picture is not silent."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: cannot write the image (unknown extension or unwritable folder)")
