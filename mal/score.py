"""MAL's label score (`mal_score`): which labels a reviewer should check first.

The score (`label_score`) is a weighted geometric mean of the mask's expected IoU under its own probabilities
and five measured signs of a label that box supervision gets right (`image_evidence`): an object whose colours
stand out from its surroundings, that fills much of its box, whose mask outline runs along image edges, whose
mask is compact, and which leaves part of its box's border free (a mask along the whole border is the box
itself: what the model draws where it has not found the object). On coco128 with the from-scratch recipe,
offline, it ranked labels by their real IoU with Spearman 0.52 / 0.56 on the two checkpoints its weights were
chosen on and 0.52 on a third; with equal weights 0.51 / 0.54 / 0.50, without the last two signs 0.46 / 0.48,
the expected IoU alone 0.22-0.29 (BENCHMARKS.md).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mal.crf import colour_cells, colour_histogram, image_at

COLOUR_GRID = 48  # side of the grid colours are compared on (the test-time refinement's)
EDGE_GRID = 96  # side of the grid image gradients are taken on


def expected_iou(probs: torch.Tensor, mask: torch.Tensor) -> float:
    """The IoU the thresholded `mask` would have with the truth if the pixel probabilities `probs` were
    calibrated, sum(p m) / sum(p + m - p m) (a soft IoU; same-shape H x W tensors). Thin or uncertain masks
    score low."""
    p, m = probs.float(), mask.float()
    union = (p + m - p * m).sum()
    return float((p * m).sum() / union) if union > 0 else 0.0


# Exponents of the factors of `image_evidence` in the score (the expected IoU's is 1). Chosen on coco128 among
# 0.5 / 1 / 2 on two checkpoints' labels and checked on a third (BENCHMARKS.md): edge alignment counts double,
# colour separability and compactness half.
EVIDENCE_WEIGHTS = {"separability": 0.5, "fill": 1.0, "edge_alignment": 2.0, "compactness": 0.5, "clearance": 1.0}
# Border clearance enters the score as floor + (1 - floor) x clearance: a mask over its box's whole border still
# ranks by its other factors instead of tying at 0 (Spearman on coco128 0.521-0.554 against 0.522-0.555 without)
CLEARANCE_FLOOR = 0.05
BORDER_BAND = 0.03  # width of the box's border band in `border_clearance`, as a share of the box's shorter side


def label_score(expected: float, evidence: float) -> float:
    """The weighted geometric mean of the expected IoU and the factors of `image_evidence` (`evidence` is their
    weighted product): it ranks as the product does, on a scale where a typical label is near one half, not near
    0.01."""
    return max(expected * evidence, 0.0) ** (1 / (1 + sum(EVIDENCE_WEIGHTS.values())))


def colour_separability(image: torch.Tensor, mask: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """1 - Bhattacharyya coefficient of the colour histograms of the mask and of the crop outside the box:
    0 when the object has its surroundings' colours, near 1 when they share none. Inputs B x 3 x H x W in
    [0, 1] and B x 1 x H x W masks; returns B values."""
    cells = colour_cells(image)
    inside, outside = colour_histogram(cells, mask), colour_histogram(cells, 1 - box_mask)
    return (1 - (inside * outside).sqrt().sum(dim=1)).clamp(min=0)  # rounding may dip below 0


def edge_alignment(image: torch.Tensor, mask: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """How much stronger the image gradient is on the mask's outline inside the box than in the box on
    average, as a / (1 + a) in [0, 1) (0 without an outline). Inputs as `colour_separability`."""
    dx, dy = image.diff(dim=3).norm(dim=1, keepdim=True), image.diff(dim=2).norm(dim=1, keepdim=True)
    gradient = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))
    outline = (F.max_pool2d(mask, 3, 1, 1) + F.max_pool2d(-mask, 3, 1, 1)) * box_mask  # dilation - erosion
    on_outline = (gradient * outline).sum((1, 2, 3)) / outline.sum((1, 2, 3)).clamp(min=1)
    in_box = (gradient * box_mask).sum((1, 2, 3)) / box_mask.sum((1, 2, 3)).clamp(min=1)
    ratio = on_outline / in_box.clamp(min=1e-6)
    return ratio / (1 + ratio)


def compactness(mask: np.ndarray) -> float:
    """Isoperimetric quotient 4 pi A / P^2 of a binary H x W mask (Polsby-Popper): 1 for a disc, about 0.8 for a
    square (on a pixel grid), near 0 for a ragged or stringy one; 0 for an empty mask. P is the length of the
    outer contours (OpenCV), A the pixel count."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    perimeter = sum(cv2.arcLength(contour, True) for contour in contours)
    return min(4 * np.pi * float(mask.sum()) / perimeter**2, 1.0) if perimeter > 0 else 0.0


def border_clearance(mask: np.ndarray) -> float:
    """Share of the border band of a box (the H x W `mask` cut to its box; band BORDER_BAND of the shorter side,
    at least a pixel) that the mask leaves free: 0 for the box itself. A tight box touches its object on each
    side but seldom along a whole side."""
    height, width = mask.shape
    band = max(1, int(BORDER_BAND * min(height, width)))
    ring = np.ones_like(mask, dtype=bool)
    ring[band:-band, band:-band] = False
    return 1.0 - float(mask[ring].mean())


def mask_shape(masks: torch.Tensor, box_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crop, the `compactness` and the `border_clearance` of its mask cut to its box. masks, box_masks:
    B x C x C (0/1); returns two tensors of B values in [0, 1] (0 for an empty box)."""
    values = []
    for mask, box in zip(masks.bool().cpu().numpy(), box_masks.bool().cpu().numpy()):
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        if not len(rows):
            values.append((0.0, 0.0))
            continue
        in_box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        values.append((compactness(in_box), border_clearance(in_box)))
    compact, clearance = torch.tensor(values, dtype=torch.float32).view(-1, 2).unbind(dim=1)
    return compact, clearance


def image_evidence(
    probs: torch.Tensor, crops: torch.Tensor, box_masks: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """Per crop, the product of colour separability, box fill, edge alignment and `mask_shape` of its mask, each
    to its power in EVIDENCE_WEIGHTS.

    probs: B x S x S foreground probabilities of B crops; crops: B x 3 x C x C uint8; box_masks: B x C x C
    (0/1); thresholds: B probabilities above which a pixel is in the mask (as the label is cut). Returns B
    values in [0, 1]. Alone, each factor ranked coco128's labels by IoU with Spearman 0.40-0.42 / 0.09-0.10 /
    0.29-0.30 / (compactness) 0.27 / (border clearance) 0.03; the fill and the border clearance matter in the
    product (thin objects, filling little of their box, are where box supervision fails; BENCHMARKS.md).
    """

    def at_grid(side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image in [0, 1], mask and box on a side x side grid, each B x C x side x side."""
        box = (F.interpolate(box_masks[:, None].float(), size=(side, side), mode="area") > 0.5).float()
        probs_here = F.interpolate(probs[:, None].float(), size=(side, side), mode="area")
        mask = (probs_here > thresholds.view(-1, 1, 1, 1).to(probs_here)).float() * box
        return image_at(crops, side), mask, box

    image, mask, box = at_grid(COLOUR_GRID)
    fill = mask.sum((1, 2, 3)) / box.sum((1, 2, 3)).clamp(min=1)
    crop_size = box_masks.shape[-1]  # the shape is read at the crop's own size, probabilities smoothly upsampled
    crop_probs = F.interpolate(probs[:, None].float(), size=(crop_size, crop_size), mode="bilinear")[:, 0]
    crop_mask = (crop_probs > thresholds.view(-1, 1, 1).to(crop_probs)) & box_masks.bool()
    compact, clearance = mask_shape(crop_mask, box_masks)
    factors = {
        "separability": colour_separability(image, mask, box),
        "fill": fill,
        "edge_alignment": edge_alignment(*at_grid(EDGE_GRID)),
        "compactness": compact.to(fill),
        "clearance": CLEARANCE_FLOOR + (1 - CLEARANCE_FLOOR) * clearance.to(fill),
    }
    return torch.stack([factors[name] ** weight for name, weight in EVIDENCE_WEIGHTS.items()]).prod(dim=0)
