"""What differs between the box-promptable Segment Anything families, and nothing else.

All four take boxes the same way (`input_boxes`: 1 x N x 4, x1 y1 x2 y2 in the pixels of the resized
model input), return `pred_masks` (1 x N x K x h x w logits, h = w = 4x the embedding grid) and
`iou_scores` (1 x N x K), and threshold logits at 0. They differ in three places:

- what `get_image_embeddings` returns and how `forward` takes it back: SAM and SAM 2 / EdgeTAM one object
  (a tensor, a list of feature levels) as `image_embeddings`; SAM-HQ a pair (the last layer, the early
  layers' features) as `image_embeddings` and `intermediate_embeddings` (transformers'
  modeling_sam.py, modeling_sam_hq.py, modeling_sam2.py, modeling_edgetam.py);
- the input frame: SAM / SAM-HQ resize the longer side and pad to a square, so their
  `post_process_masks` needs the resized size to cut the padding off; SAM 2 / EdgeTAM resize to the
  square, and their `post_process_masks` takes the original sizes only (image_processing_sam.py,
  image_processing_sam2.py);
- the multimask outputs: SAM-HQ sorts its K masks by predicted IoU (so "first" is "best") and adds its
  HQ mask to each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# transformers model_type (config.json) -> family
MODEL_TYPES = {"sam": "sam", "sam_hq": "sam_hq", "sam2": "sam2", "edgetam": "edgetam"}


def _one(embeddings) -> dict:
    return {"image_embeddings": embeddings}


def _with_intermediate(embeddings) -> dict:
    last, intermediate = embeddings
    return {"image_embeddings": last, "intermediate_embeddings": intermediate}


@dataclass(frozen=True)
class BoxFamily:
    """One family's differences (see the module docstring).

    name: sam, sam_hq, sam2 or edgetam.
    decoder_inputs: `get_image_embeddings(...)` output -> the keyword arguments of `forward`.
    padded: the processor pads the resized image to a square (its post-processing needs the resized size).
    """

    name: str
    decoder_inputs: Callable[[object], dict]
    padded: bool

    def upscale(
        self, image_processor, logits: torch.Tensor, original_size: tuple[int, int], resized_size: tuple[int, int]
    ) -> torch.Tensor:
        """N x 1 x h x w float logits -> N x 1 x H x W bool masks at the image's size, by the processor's own
        `post_process_masks` (bilinear, thresholded at the logit 0.0)."""
        if self.padded:
            return image_processor.post_process_masks([logits], [original_size], [resized_size], mask_threshold=0.0)[0]
        return image_processor.post_process_masks([logits], [original_size], mask_threshold=0.0)[0]


FAMILIES = {
    "sam": BoxFamily("sam", _one, padded=True),
    "sam_hq": BoxFamily("sam_hq", _with_intermediate, padded=True),
    "sam2": BoxFamily("sam2", _one, padded=False),
    "edgetam": BoxFamily("edgetam", _one, padded=False),
}


def rows_of(embeddings, rows: slice):
    """The same structure (a tensor, or nested lists / tuples of tensors, batch first) for the images `rows`."""
    if isinstance(embeddings, torch.Tensor):
        return embeddings[rows]
    return type(embeddings)(rows_of(e, rows) for e in embeddings)
