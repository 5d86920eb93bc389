"""Mean-field inference in a binary dense-neighbourhood CRF, to refine soft masks along colour edges.

Each pixel talks to its k x k neighbours with affinity exp(-|I_i - I_j|^2 / (2 zeta^2)): neighbours of
similar colour pull towards the same label, so a soft mask snaps to the object's colour boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbours(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """B x C x H x W -> B x C x (k*k - 1) x H x W: each pixel's neighbours, the pixel itself left out."""
    b, c, h, w = x.shape
    pad = kernel_size // 2
    patches = F.unfold(F.pad(x, [pad] * 4, mode="replicate"), kernel_size).view(b, c, kernel_size**2, h, w)
    centre = kernel_size**2 // 2
    return torch.cat([patches[:, :, :centre], patches[:, :, centre + 1 :]], dim=2)


def colour_affinity(image: torch.Tensor, kernel_size: int, zeta: float) -> torch.Tensor:
    """B x 3 x H x W image in [0, 1] -> B x (k*k - 1) x H x W pairwise weights."""
    diff = neighbours(image, kernel_size) - image[:, :, None]
    return torch.exp(-(diff**2).sum(dim=1) / (2 * zeta**2))


def mean_field(
    unary: torch.Tensor, image: torch.Tensor, kernel_size: int = 3, zeta: float = 0.1, num_iter: int = 100
) -> torch.Tensor:
    """Refine foreground probabilities `unary` (B x 1 x H x W in (0, 1)) with a Potts colour CRF.

    Update: Q = sigmoid(logit(unary) + sum_j w_ij (2 Q_j - 1)), i.e. neighbours' agreement minus
    disagreement, weighted by colour affinity.
    """
    affinity = colour_affinity(image.float(), kernel_size, zeta)
    prior = torch.logit(unary.float(), eps=1e-6)
    q = unary.float()
    for _ in range(num_iter):
        message = (affinity * (2 * neighbours(q, kernel_size)[:, 0] - 1)).sum(dim=1, keepdim=True)
        q = torch.sigmoid(prior + message)
    return q
