"""Box crop geometry: expand a box, cut the crop out of the image, paste a crop mask back.

Boxes are `xyxy` in continuous pixel coordinates (pixel i covers [i, i + 1)). Every step follows the
original MAL code's test path, so that its weights give its masks (REFERENCE.md 2a, checked against
../shared/parity/mal: crops equal, masks IoU >= 0.999):
- the crop box is the box expanded about its centre, +1 pixel on the right and bottom, rounded outwards;
- the crop is cut from the uint8 image (outside pixels wrap around the image) and resized with PIL's
  default filter (bicubic) to a square, kept uint8;
- the mask logits are resized to that square, turned into probabilities, multiplied by the box mask
  resized the same way, and resized back to the crop box.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def xywh_to_xyxy(box) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def random_margins(rng: np.random.Generator, margin_rate: tuple[float, float]) -> np.ndarray:
    """Training margins (left, top, right, bottom): m ~ U(margin_rate) gated by (g0, g1, 1-g0, 1-g1)."""
    m = rng.uniform(margin_rate[0], margin_rate[1], size=4)
    g = rng.uniform(0, 1, size=2)
    return m * np.array([g[0], g[1], 1 - g[0], 1 - g[1]])


def fixed_margins(test_margin_rate: tuple[float, float]) -> np.ndarray:
    """Fixed test margins: half of the rate on every side (0.6 -> a crop 1.3x the box)."""
    mx, my = test_margin_rate[0] / 2, test_margin_rate[1] / 2
    return np.array([mx, my, mx, my])


def expand_box(box_xyxy, margins) -> tuple[int, int, int, int]:
    """Move each side away from the centre by (1 + margin) half-extents, then floor the left/top and ceil the
    right/bottom after adding 1 to them, as the original MAL does: [10, 20, 50, 60] at margins 0.3 gives
    (4, 14, 57, 67). The result (x1, y1 exclusive) always spans at least one pixel.
    """
    x0, y0, x1, y1 = box_xyxy
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    left, top, right, bottom = margins
    ex0 = math.floor(cx - (1 + left) * hw)
    ey0 = math.floor(cy - (1 + top) * hh)
    ex1 = max(math.ceil(cx + (1 + right) * hw + 1), ex0 + 1)
    ey1 = max(math.ceil(cy + (1 + bottom) * hh + 1), ey0 + 1)
    return ex0, ey0, ex1, ey1


def crop_wrapped(image: np.ndarray, crop_box) -> np.ndarray:
    """Cut `crop_box` out of an H x W (x C) image; pixels outside wrap around the image (no zero padding,
    which would hurt the CRF term in training)."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    height, width = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return image[y0:y1, x0:x1]
    rows = np.arange(y0, y1) % height
    cols = np.arange(x0, x1) % width
    return image[rows[:, None], cols[None, :]]


def resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """An H x W (x 3) uint8 array resized to size x size with PIL's default filter (bicubic), as the original."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize((size, size)))


def make_crop(image: np.ndarray, crop_box, size: int) -> torch.Tensor:
    """The 3 x size x size uint8 crop of an H x W x 3 uint8 image."""
    return torch.from_numpy(resize_square(crop_wrapped(image, crop_box), size).copy()).permute(2, 0, 1)


def resized_cut(array: np.ndarray, crop_box, size: int) -> torch.Tensor:
    """C x size x size float: `crop_box` cut out of an H x W (x C) array as `crop_wrapped` cuts it, resized with
    an antialiased bilinear filter (an area average when shrinking)."""
    cut = torch.from_numpy(np.ascontiguousarray(crop_wrapped(array, crop_box)))
    cut = cut.permute(2, 0, 1) if cut.ndim == 3 else cut[None]
    return F.interpolate(cut[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def make_training_crop(image: np.ndarray, crop_box, size: int) -> torch.Tensor:
    """The 3 x size x size uint8 training crop: the same cut as `make_crop`, resized by `resized_cut` instead of
    PIL's bicubic. Training may differ from the test path; this one learns better from scratch: `make demo`
    reached instance mIoU 0.657 with it and 0.608 with PIL bicubic training crops, everything else equal
    (BENCHMARKS.md)."""
    return resized_cut(image, crop_box, size).round().clamp(0, 255).to(torch.uint8)


def make_mask_crop(mask: np.ndarray, crop_box, size: int) -> torch.Tensor:
    """1 x size x size float (0/1) crop of an H x W 0/1 instance mask: cut and resized as `make_training_crop`
    cuts and resizes the image, then thresholded at one half."""
    return (resized_cut(mask, crop_box, size) > 0.5).float()


def box_mask_in_crop(box_xyxy, crop_box, size: int) -> torch.Tensor:
    """size x size uint8 mask (0/1) of the box's pixels (floor of the left/top to ceil of the right/bottom)
    in the crop, resized like the crop."""
    x0, y0, x1, y1 = crop_box
    rows = np.arange(y0, y1)
    cols = np.arange(x0, x1)
    inside_y = (rows >= math.floor(box_xyxy[1])) & (rows < math.ceil(box_xyxy[3]))
    inside_x = (cols >= math.floor(box_xyxy[0])) & (cols < math.ceil(box_xyxy[2]))
    mask = (inside_y[:, None] & inside_x[None, :]).astype(np.uint8)
    return torch.from_numpy(resize_square(mask, size).copy())


def paste_probabilities(logits: torch.Tensor, box_mask: torch.Tensor, crop_box, image_size: tuple[int, int]):
    """Map a crop's mask logits back to the image, restricted to the box.

    logits (h x w) are resized (bilinear) to the box mask's size x size, turned into probabilities, multiplied
    by the box mask, and resized (bilinear) to the crop box. Returns `(x0, y0, probabilities)`: the part of
    the crop box inside the image, starting at column x0 and row y0 (empty when the crop misses the image).
    """
    height, width = image_size
    cx0, cy0, cx1, cy1 = crop_box
    size = box_mask.shape[-1]
    probs = F.interpolate(logits[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    probs = probs.sigmoid() * box_mask.to(probs.device, torch.float32)
    probs = F.interpolate(probs, size=(cy1 - cy0, cx1 - cx0), mode="bilinear", align_corners=False)[0, 0]
    x0, y0 = min(max(cx0, 0), width), min(max(cy0, 0), height)
    x1, y1 = max(min(cx1, width), x0), max(min(cy1, height), y0)
    return x0, y0, probs[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
