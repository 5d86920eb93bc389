"""A small synthetic COCO dataset with exact instance masks, for the demo and the tests.

Textured backgrounds (smooth noise, stripes, gradients) with non-overlapping objects of five shapes
(one has a hole) in several sizes; each object has its own shaded colour, so boxes alone carry enough
signal to learn masks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from labelkit.masks import mask_to_rle, rle_area

SHAPES = ("ellipse", "rectangle", "triangle", "star", "ring")


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    small = rng.random((max(2, height // scale), max(2, width // scale), 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An H x W x 3 float image in [0, 1]: smooth noise, stripes or a gradient around a base colour."""
    base = rng.random(3).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        pattern = _smooth_noise(rng, height, width, int(rng.integers(8, 40)))
    elif kind == 1:
        angle, period = rng.random() * np.pi, rng.uniform(6, 24)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        wave = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        pattern = np.repeat(wave[:, :, None], 3, axis=2)
    else:
        ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        pattern = np.broadcast_to(ramp, (height, width, 3))
    return np.clip(base * 0.7 + 0.3 * pattern + rng.normal(0, 0.02, (height, width, 3)), 0, 1)


def _shape_mask(rng: np.random.Generator, shape: str, height: int, width: int, cx, cy, r) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    angle = rng.uniform(0, 360)
    if shape == "ellipse":
        axes = (int(r), int(r * rng.uniform(0.4, 0.9)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 1, -1)
    elif shape == "ring":
        cv2.circle(mask, (int(cx), int(cy)), int(r), 1, -1)
        cv2.circle(mask, (int(cx), int(cy)), int(r * rng.uniform(0.4, 0.6)), 0, -1)
    else:
        if shape == "rectangle":
            corners = [(r, r * 0.6), (-r, r * 0.6), (-r, -r * 0.6), (r, -r * 0.6)]
        elif shape == "triangle":
            corners = [(r * np.cos(a), r * np.sin(a)) for a in np.deg2rad([90, 210, 330])]
        else:
            corners = [
                ((r if k % 2 == 0 else r * 0.45) * np.cos(a), (r if k % 2 == 0 else r * 0.45) * np.sin(a))
                for k, a in enumerate(np.linspace(0, 2 * np.pi, 10, endpoint=False))
            ]
        t = np.deg2rad(angle)
        points = [(cx + x * np.cos(t) - y * np.sin(t), cy + x * np.sin(t) + y * np.cos(t)) for x, y in corners]
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def make_image(rng: np.random.Generator, height: int, width: int, max_objects: int):
    """Return (uint8 image, list of (shape index, mask)) with non-overlapping objects."""
    canvas = _texture(rng, height, width)
    occupied = np.zeros((height, width), dtype=bool)
    objects = []
    for _ in range(max_objects * 10):
        if len(objects) == max_objects:
            break
        shape = int(rng.integers(len(SHAPES)))
        r = float(np.exp(rng.uniform(np.log(6), np.log(min(height, width) * 0.3))))
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        mask = _shape_mask(rng, SHAPES[shape], height, width, cx, cy, r)
        grown = cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)
        if mask.sum() < 20 or (grown & occupied).any():
            continue
        occupied |= grown
        shading = _smooth_noise(rng, height, width, 16) - 0.5
        fill = np.clip(rng.random(3).astype(np.float32) + 0.15 * shading, 0, 1)
        canvas[mask.astype(bool)] = fill[mask.astype(bool)]
        objects.append((shape, mask))
    image = cv2.GaussianBlur((canvas * 255).astype(np.uint8), (3, 3), 0.6)
    return image, objects


def make_synthetic_coco(
    out_dir: str | Path,
    num_images: int = 40,
    height: int = 240,
    width: int = 320,
    max_objects: int = 5,
    seed: int = 0,
    name: str = "instances",
) -> Path:
    """Write `out_dir/images/*.jpg` and `out_dir/<name>.json` (RLE ground-truth masks); return the JSON path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = make_image(rng, height, width, max_objects)
        file_name = f"{name}_{image_id:05d}.jpg"
        cv2.imwrite(
            str(out_dir / "images" / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for shape, mask in objects:
            x, y, w, h = cv2.boundingRect(mask)
            rle = mask_to_rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": shape + 1,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": rle_area(rle),
                    "segmentation": rle,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--num-images", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="instances")
    args = parser.parse_args()
    print(make_synthetic_coco(args.out_dir, args.num_images, seed=args.seed, name=args.name))


if __name__ == "__main__":
    main()
