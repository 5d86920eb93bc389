"""MAL's box-supervised losses: multiple-instance learning on projections, and CRF pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_lab

from mal.crf import mean_field, neighbours


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample Dice loss 1 - 2 sum(p t) / (sum p^2 + sum t^2), flattened over all but dim 0."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    return 1 - 2 * inter / (pred.pow(2).sum(1) + target.pow(2).sum(1) + eps)


def mil_loss(probs: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Multiple-instance loss (B x 1 x H x W inputs).

    Every row and column crossing the box is a positive bag (some pixel of it is foreground), every
    one outside is a negative bag: compare max-projections of the prediction and of the box mask
    along both axes with Dice.
    """
    rows = dice_loss(probs.amax(dim=3), box_mask.amax(dim=3))
    cols = dice_loss(probs.amax(dim=2), box_mask.amax(dim=2))
    return (rows + cols).mean()


@torch.no_grad()
def crf_pseudo_label(
    student_probs: torch.Tensor,
    teacher_probs: torch.Tensor,
    box_mask: torch.Tensor,
    image: torch.Tensor,
    kernel_size: int = 3,
    zeta: float = 0.1,
    num_iter: int = 100,
    low: float = 0.1,
    high: float = 0.9,
) -> torch.Tensor:
    """Average student and teacher, keep the box, clamp to [low, high], refine with mean-field, threshold."""
    unary = ((student_probs + teacher_probs) / 2 * box_mask).clamp(low, high)
    refined = mean_field(unary, image, kernel_size, zeta, num_iter)
    return (refined > 0.5).float() * box_mask


def crf_loss(student_probs: torch.Tensor, pseudo_label: torch.Tensor) -> torch.Tensor:
    """Dice between the student's prediction and the CRF pseudo-label."""
    return dice_loss(student_probs, pseudo_label).mean()


def lab_similarity(image: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """B x 3 x H x W RGB image in [0, 1] -> B x (k*k - 1) x H x W colour similarity exp(-||Lab_i - Lab_j|| / 2)
    of each pixel to its neighbours (BoxInst, Tian et al. CVPR 2021: CIE Lab, theta 2)."""
    lab = rgb_to_lab(image.float())
    return torch.exp(-(neighbours(lab, kernel_size, dilation) - lab[:, :, None]).norm(dim=1) / 2)


def pairwise_loss(
    logits: torch.Tensor,
    similarity: torch.Tensor,
    box_mask: torch.Tensor,
    kernel_size: int = 3,
    dilation: int = 2,
    threshold: float = 0.3,
) -> torch.Tensor:
    """BoxInst's pairwise affinity loss: neighbours of similar colour should share a label.

    logits: B x 1 x H x W mask logits; similarity: B x (k*k - 1) x H x W from `lab_similarity` (same k and
    dilation); box_mask: B x 1 x H x W. Over the edges from a pixel inside the box to a neighbour of colour
    similarity >= threshold (BoxInst: 3 x 3, dilation 2, threshold 0.3), the mean of -log P(same label), with
    P(same) = p_i p_j + (1 - p_i)(1 - p_j), computed from log-sigmoids for stability.
    """
    log_fg, log_bg = F.logsigmoid(logits.float()), F.logsigmoid(-logits.float())
    log_same = torch.logaddexp(
        log_fg + neighbours(log_fg, kernel_size, dilation)[:, 0],
        log_bg + neighbours(log_bg, kernel_size, dilation)[:, 0],
    )
    edges = (similarity >= threshold).float() * box_mask
    return -(log_same * edges).sum() / edges.sum().clamp(min=1.0)


def ramp(step: int, ramp_steps: int) -> float:
    """Linear ramp-up factor from 0 to 1 over `ramp_steps` optimizer steps."""
    return 1.0 if ramp_steps <= 0 else min(step / ramp_steps, 1.0)
