"""The numerics of the original Grounding DINO code, on top of transformers' classes.

transformers 5.x ports the architecture and the weights exactly but not two details of the original
inference, and each moves the labels of checkpoints that were trained with the original code:

- Boxes. The decoder refines its reference boxes layer by layer as sigmoid(delta + inverse_sigmoid(ref)),
  and the box head adds the same inverse sigmoid to its last delta. IDEA GroundingDINO takes
  `inverse_sigmoid(x, eps=1e-3)` from groundingdino/util/misc.py (clamp x to [0, 1], then
  log(max(x, eps) / max(1 - x, eps))) in both places (models/GroundingDINO/transformer.py decoder,
  groundingdino.py head). transformers writes both as `torch.special.logit(x, eps=1e-5)`
  (modeling_grounding_dino.py: GroundingDinoDecoder.forward and
  GroundingDinoForObjectDetection.forward). Reference points saturate at 0 or 1 wherever the two-stage
  proposal sits at the border or on padding (its logit is set to inf), and there the two disagree:
  6.91 vs 11.51 at x = 1. mmdetection, the original of MM-Grounding-DINO, uses the same formula with
  eps=1e-3 to refine (mmdet/models/layers/transformer/dino_layers.py, DinoTransformerDecoder, which
  GroundingDinoTransformerDecoder inherits) and its default eps=1e-5 in the head
  (mmdet/models/dense_heads/grounding_dino_head.py, GroundingDINOHead.forward).
- Pixels. IDEA resizes a PIL image (T.RandomResize([800], max_size=1333): torchvision's resize of a PIL
  image, which is PIL bilinear) and then applies ToTensor and Normalize; transformers' default
  (torchvision) processor resizes tensors and differs by one grey level in many pixels, and both
  transformers processors round the longer side from the unrounded shorter one, so some aspect ratios
  come out one pixel wider than IDEA's (640x218 gives 1333 columns, IDEA 1332). MM-Grounding-DINO's
  original sizes images by mmcv's imrescale (int(side * scale + 0.5): 640x480 gives 1067 columns, IDEA
  1066); that is not reproduced, MM-Grounding-DINO gets the same PIL preprocessing.

`use_original_numerics` swaps the inverse sigmoid into the two forwards of one model instance (the
weights and transformers' code stay as they are); `IdeaImageProcessor` is transformers' PIL processor
with IDEA's size rule.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GroundingDinoImageProcessorPil
from transformers.image_utils import SizeDict

from gdino.errors import GDinoError


def inverse_sigmoid(x: torch.Tensor, eps: float) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and each side of the ratio kept >= eps.

    Written as IDEA GroundingDINO's groundingdino/util/misc.py `inverse_sigmoid` (default eps 1e-3) and
    mmdet's mmdet/models/layers/transformer/utils.py `inverse_sigmoid` (default eps 1e-5), which agree
    but for the default. Unlike torch.special.logit(x, eps) it does not move x into [eps, 1 - eps] first.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@dataclass(frozen=True)
class BoxEps:
    """The eps of the original's inverse sigmoid: in the decoder's box refinement and in the box head."""

    refine: float
    head: float


# By transformers class name: Grounding DINO's weights come from IDEA's code, MM-Grounding-DINO's from mmdet.
ORIGINAL_EPS = {
    "GroundingDinoForObjectDetection": BoxEps(refine=1e-3, head=1e-3),
    "MMGroundingDinoForObjectDetection": BoxEps(refine=1e-3, head=1e-5),
}


def use_original_numerics(model: torch.nn.Module) -> None:
    """Make one Grounding DINO or MM-Grounding-DINO instance invert the sigmoid as its original code does.

    Sets `forward` on the instance (as gdino.deformable does) for the decoder and the detection head:
    transformers' own forward, whose `torch.special.logit` calls compute `inverse_sigmoid` with the
    original's eps. Other models are left alone.
    """
    eps = ORIGINAL_EPS.get(type(model).__name__)
    if eps is None:
        return
    decoder = model.model.decoder
    decoder.forward = functools.partial(_with_inverse_sigmoid(type(decoder).forward, eps.refine), decoder)
    model.forward = functools.partial(_with_inverse_sigmoid(type(model).forward, eps.head), model)


class _InverseSigmoid:
    """Stands in for `torch.special.logit(x, eps=...)` at a call site: `inverse_sigmoid(x, self.eps)`."""

    def __init__(self, eps: float):
        self.eps = eps

    def __call__(self, x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        return inverse_sigmoid(x, self.eps)


class _ModuleView(types.ModuleType):
    """A module that answers with `base`'s attributes except the ones given."""

    def __init__(self, base: types.ModuleType, **overrides):
        super().__init__(base.__name__)
        self._base = base
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        return getattr(self._base, name)


@functools.cache
def _with_inverse_sigmoid(forward: types.FunctionType, eps: float) -> types.FunctionType:
    """`forward` run with a `torch` global whose `special.logit` is `inverse_sigmoid(., eps)`.

    The same code object, so transformers' forward is followed line by line; only the name `torch` in
    its globals resolves differently, for this function alone (no module or global state is changed).
    """
    if not {"special", "logit"} <= set(forward.__code__.co_names):
        raise GDinoError(
            f"{forward.__module__}.{forward.__qualname__} no longer calls torch.special.logit: this transformers "
            "version is not supported by gdino.fidelity (the box numerics of the original code)"
        )
    torch_view = _ModuleView(torch, special=_ModuleView(torch.special, logit=_InverseSigmoid(eps)))
    names = {**forward.__globals__, "torch": torch_view}
    patched = types.FunctionType(forward.__code__, names, forward.__name__, forward.__defaults__, forward.__closure__)
    patched.__kwdefaults__ = forward.__kwdefaults__
    patched.__qualname__ = forward.__qualname__
    patched.__doc__ = f"{forward.__qualname__}, inverting sigmoids as the original code (eps {eps})."
    return patched


def idea_resize_size(height: int, width: int, size: int = 800, max_size: int | None = 1333) -> tuple[int, int]:
    """(height, width) after IDEA's T.RandomResize([size], max_size): the shorter side becomes `size`
    unless that makes the longer one exceed `max_size`, then the shorter side is rounded first.

    IDEA groundingdino/datasets/transforms.py `resize.get_size_with_aspect_ratio`; transformers computes
    the longer side from the unrounded shorter one (one pixel more for 640x218).
    """
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class IdeaImageProcessor(GroundingDinoImageProcessorPil):
    """transformers' PIL Grounding DINO processor with IDEA's output size for a shortest/longest edge.

    The rest is transformers' PIL path, which is IDEA's: PIL bilinear resize of the uint8 image, x / 255
    in fp32 (ToTensor), (x - mean) / std (Normalize), zero padding to the batch's largest image.
    A directory's own settings (size, mean, std, ...) load as with the base class.
    """

    def resize(self, image, size: SizeDict, resample=None, **kwargs):
        if size.shortest_edge and size.longest_edge:
            height, width = idea_resize_size(*image.shape[-2:], size.shortest_edge, size.longest_edge)
            size = SizeDict(height=height, width=width)
        return super().resize(image, size=size, resample=resample, **kwargs)

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        """The base class's rescale of a contiguous copy: the resized image comes back from PIL as a
        strided C x H x W view, on which rescale and normalize were the slowest steps."""
        return super().rescale(np.ascontiguousarray(image), scale, **kwargs)

    def normalize(self, image: np.ndarray, mean, std, **kwargs) -> np.ndarray:
        """(x - mean) / std per channel of a C x H x W float image, in its dtype: the arithmetic of
        transformers' normalize and torchvision's Normalize, without the base class's transposes."""
        if not np.issubdtype(image.dtype, np.floating):
            return super().normalize(image, mean, std, **kwargs)
        channels = (image.shape[0], 1, 1)
        mean = np.broadcast_to(np.asarray(mean, dtype=image.dtype).reshape(-1, 1, 1), channels)
        std = np.broadcast_to(np.asarray(std, dtype=image.dtype).reshape(-1, 1, 1), channels)
        return (image - mean) / std
