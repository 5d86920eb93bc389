"""Box crop geometry: expand a box, cut the crop out of the image, paste a crop mask back.

Boxes are `xyxy` in continuous pixel coordinates (pixel i covers [i, i + 1)). A crop box is the
expanded box rounded outwards to whole pixels, so crop and paste are exact inverses of each other.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


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
    """Move each side away from the centre by (1 + margin) half-extents; round outwards to pixels.

    The result always spans at least one pixel, so degenerate boxes still get a crop.
    """
    x0, y0, x1, y1 = box_xyxy
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    left, top, right, bottom = margins
    ex0 = math.floor(cx - (1 + left) * hw)
    ey0 = math.floor(cy - (1 + top) * hh)
    ex1 = max(math.ceil(cx + (1 + right) * hw), ex0 + 1)
    ey1 = max(math.ceil(cy + (1 + bottom) * hh), ey0 + 1)
    return ex0, ey0, ex1, ey1


def crop_wrapped(image: torch.Tensor, crop_box) -> torch.Tensor:
    """Cut `crop_box` out of a C x H x W image; pixels outside wrap around the image (no zero padding)."""
    x0, y0, x1, y1 = (math.floor(v) for v in crop_box)
    height, width = image.shape[-2:]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return image[:, y0:y1, x0:x1]
    rows = torch.arange(y0, y1, device=image.device) % height
    cols = torch.arange(x0, x1, device=image.device) % width
    return image[:, rows[:, None], cols[None, :]]


def resize_crop(crop: torch.Tensor, size: int) -> torch.Tensor:
    """C x h x w -> C x size x size float, bilinear with antialiasing (an area average when shrinking)."""
    return F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def box_mask_in_crop(box_xyxy, crop_box, size: int) -> torch.Tensor:
    """A size x size mask of the pixels whose centres fall inside the box, in the resized crop's frame."""
    x0, y0, x1, y1 = crop_box
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    xs = x0 + centres * (x1 - x0)
    ys = y0 + centres * (y1 - y0)
    bx0, by0, bx1, by1 = box_xyxy
    inside_x = (xs >= math.floor(bx0)) & (xs <= math.ceil(bx1))
    inside_y = (ys >= math.floor(by0)) & (ys <= math.ceil(by1))
    return (inside_y[:, None] & inside_x[None, :]).float()


def resize_crops(image: torch.Tensor, crop_boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop and resize many boxes of one C x H x W image at once: N x C x size x size (float).

    Pixels outside the image wrap around it, as in training crops. On a CPU every crop is made exactly as a
    training crop is (`crop_wrapped` + `resize_crop`): there this is about 5x faster than `roi_align` with
    the several samples per output pixel that shrinking a large box needs (BENCHMARKS.md). On other devices
    all crops come from batched `roi_align` calls (`roi_align_crops`). Either way a box's crop does not
    depend on the other boxes.
    """
    boxes = crop_boxes.reshape(-1, 4)
    if image.device.type != "cpu":
        return roi_align_crops(image, boxes, size)
    crops = [resize_crop(crop_wrapped(image, box), size) for box in boxes.tolist()]
    return torch.stack(crops) if crops else torch.zeros(0, image.shape[0], size, size, device=image.device)


def roi_align_crops(image: torch.Tensor, crop_boxes: torch.Tensor, size: int) -> torch.Tensor:
    """`resize_crops` in one `roi_align` per sampling ratio, on the image padded by wrapping around its borders.

    Sampling several points per output pixel when shrinking approximates the area average of the antialiased
    resize; the number of points is chosen per box (ceil(longest side / size), at most 8).
    """
    height, width = image.shape[1:]
    boxes = crop_boxes.to(device=image.device, dtype=torch.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return torch.zeros(0, image.shape[0], size, size, device=image.device)
    pad_x = int(min(width, max(0, -boxes[:, 0].min(), boxes[:, 2].max() - width)))
    pad_y = int(min(height, max(0, -boxes[:, 1].min(), boxes[:, 3].max() - height)))
    source = F.pad(image[None].float(), (pad_x, pad_x, pad_y, pad_y), mode="circular")
    boxes = boxes + torch.tensor([pad_x, pad_y, pad_x, pad_y], device=image.device, dtype=torch.float32)
    sampling = ((boxes[:, 2:] - boxes[:, :2]).amax(dim=1) / size).ceil().clamp(1, 8).long()
    crops = source.new_empty((len(boxes), image.shape[0], size, size))
    for ratio in sampling.unique().tolist():  # one roi_align per sampling ratio (a few at most)
        index = (sampling == ratio).nonzero(as_tuple=True)[0]
        crops[index] = roi_align(
            source, [boxes[index]], output_size=size, spatial_scale=1.0, sampling_ratio=ratio, aligned=True
        )
    return crops


def paste_region(logits: torch.Tensor, crop_box, box_xyxy, image_size: tuple[int, int]):
    """Map a crop's mask logits back to the image, restricted to the box's pixels.

    Returns `(x0, y0, probabilities)` where probabilities cover rows y0.. and columns x0.. of the image
    (the box rounded outwards and clipped to the image; empty when the box lies outside it).
    """
    height, width = image_size
    cx0, cy0, cx1, cy1 = crop_box
    bx0 = min(max(math.floor(box_xyxy[0]), 0), width)
    by0 = min(max(math.floor(box_xyxy[1]), 0), height)
    bx1 = min(max(math.ceil(box_xyxy[2]), bx0), width)
    by1 = min(max(math.ceil(box_xyxy[3]), by0), height)
    full = F.interpolate(logits[None, None].float(), size=(cy1 - cy0, cx1 - cx0), mode="bilinear", align_corners=False)[
        0, 0
    ]
    region = full[by0 - cy0 : by1 - cy0, bx0 - cx0 : bx1 - cx0]
    return bx0, by0, region.sigmoid()
