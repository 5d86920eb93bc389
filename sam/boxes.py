"""Box prompts -> one mask per box, with each image embedded once and its boxes decoded in chunks.

The reference is transformers' own loop: `processor(images, input_boxes=...)`, `model(**inputs)`,
`processor.post_process_masks(...)`, then one of the K masks per box. Here the image embedding is
computed once and every chunk of `boxes_per_forward` boxes is decoded from it; only the chosen mask of
each box is upscaled (the processor's `post_process_masks`, which upscales each mask on its own, so
choosing first changes nothing). tests/test_sam_fidelity.py checks the two give the same masks.

Multimask output (`choice`):
- best: the model's three candidate masks, the one with the highest predicted IoU (SAM's automatic
  mask generator's rule; SamPredictor returns all three with their scores);
- first: the first of the three candidates (for SAM-HQ, which sorts them by predicted IoU, the same as best);
- single: the model's single-mask output (`multimask_output=False`), which the SAM papers recommend for
  unambiguous prompts such as boxes; SAM 2 / EdgeTAM then fall back to the best candidate when that mask
  is unstable (transformers' `dynamic_multimask_via_stability`, as the original SAM 2).
The score is the predicted IoU of the chosen mask, as the model gives it (SAM's IoU head has no sigmoid,
so an untrained model's may lie outside [0, 1]).
"""

from __future__ import annotations

import torch

from labelkit.oom import map_chunks

MULTIMASK_CHOICES = ("best", "first", "single")


def prompt_boxes(boxes_xyxy: torch.Tensor, original_size, resized_size, padded: bool) -> torch.Tensor:
    """N x 4 boxes in image pixels -> the model input's pixels, as the family's processor scales them.

    SamProcessor._normalize_coordinates: the boxes as float32, scaled by new / old size in float64
    (padded families, where the resized size keeps the aspect ratio). Sam2Processor: in float32 (the image
    is resized to the model's square). Returns float64 or float32 accordingly.
    """
    (old_h, old_w), (new_h, new_w) = original_size, resized_size
    boxes = boxes_xyxy.to(torch.float32)
    corners = (boxes.double() if padded else boxes).reshape(-1, 2, 2).clone()
    corners[..., 0] = corners[..., 0] * (new_w / old_w)
    corners[..., 1] = corners[..., 1] * (new_h / old_h)
    return corners.reshape(-1, 4)


def choose_masks(logits: torch.Tensor, ious: torch.Tensor, choice: str) -> tuple[torch.Tensor, torch.Tensor]:
    """N x K x h x w logits and N x K predicted IoUs -> the chosen N x h x w logits and their N IoUs."""
    if choice == "best":
        index = ious.argmax(dim=1)
    elif choice in ("first", "single"):
        index = torch.zeros(len(ious), dtype=torch.long, device=ious.device)
    else:
        raise ValueError(f"multimask: must be one of {', '.join(MULTIMASK_CHOICES)}; got {choice!r}")
    rows = torch.arange(len(ious), device=ious.device)
    return logits[rows, index], ious[rows, index]


def segment_boxes(
    segmenter, embeddings, boxes: torch.Tensor, original_size, resized_size, choice: str, boxes_per_forward: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's masks: its embeddings (batch of one) and N x 4 prompt boxes (`prompt_boxes`) -> N x H x W
    bool masks (on the CPU) and N float32 predicted IoUs. Chunks that run out of memory are halved."""
    device = segmenter.model.device

    def forward(chunk: slice) -> tuple[torch.Tensor, torch.Tensor]:
        logits, ious = segmenter.decode(embeddings, boxes[chunk].to(device), choice != "single")
        logits, ious = choose_masks(logits, ious, choice)
        return segmenter.upscale(logits, original_size, resized_size).cpu(), ious.float().cpu()

    parts = map_chunks(forward, len(boxes), boxes_per_forward)
    if not parts:
        return torch.zeros(0, *original_size, dtype=torch.bool), torch.zeros(0)
    masks, ious = zip(*parts)
    return torch.cat(masks), torch.cat(ious)
