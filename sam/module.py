"""Box -> mask with a pretrained Segment Anything model as a Lightning predict step: no training.

Per batch: the images' embeddings in one forward (halved on out-of-memory), then per image its boxes
decoded from that embedding in chunks (sam.boxes). Per box the result MAL's writer takes: the mask
cut to its non-empty rows and columns (x0, y0, region), the predicted IoU as score, and `degenerate`
for a box with less than a pixel inside the image, which gets its box mask as with MAL.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch

from labelkit.masks import box_mask
from labelkit.oom import map_chunks
from labelkit.precision import accelerator_device, resolve_dtype_name
from mal.module import MALModule, is_degenerate
from sam.boxes import MULTIMASK_CHOICES, segment_boxes
from sam.errors import SamError
from sam.families import rows_of
from sam.model import load_box_segmenter


def mask_region(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(x0, y0, region): an H x W mask cut to the rows and columns that hold a pixel (0, 0, 0 x 0 when none)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0, 0, np.zeros((0, 0), dtype=bool)
    return int(cols[0]), int(rows[0]), mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(bool)


class SamBoxLabeler(L.LightningModule):
    """Masks for COCO boxes from SAM, SAM-HQ, SAM 2 or EdgeTAM.

    Args:
        path: local Hugging Face directory of the model (config.json, weights, preprocessor_config.json),
            e.g. facebook/sam-vit-base, syscv-community/sam-hq-vit-base, facebook/sam2.1-hiera-tiny,
            yonigozlan/EdgeTAM-hf as downloaded.
        precision: weights and activations in fp32, bf16 or fp16, or auto: bf16 on a CUDA GPU with bf16 and on a
            CPU with native bf16 (AVX512-BF16 / AMX), fp16 on other CUDA GPUs, fp32 elsewhere
            (labelkit.precision), for the device of `accelerator: auto` (`sam predict` decides for its
            --trainer.accelerator). Masks are upscaled and thresholded in fp32.
        multimask: which mask a box gets. best: of the three candidates, the one with the highest predicted
            IoU; first: the first candidate; single: the model's single-mask output (sam.boxes).
        boxes_per_forward: boxes decoded at once from one image's embedding (halved on out-of-memory).
            Memory grows with it: the decoder repeats the embedding per box, and the masks are upscaled to
            the image's size.
    """

    def __init__(
        self,
        path: str,
        precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
        multimask: Literal["best", "first", "single"] = "best",
        boxes_per_forward: int = 64,
    ):
        super().__init__()
        if multimask not in MULTIMASK_CHOICES:
            raise SamError(f"model.multimask: must be one of {', '.join(MULTIMASK_CHOICES)}; got {multimask!r}")
        if boxes_per_forward < 1:
            raise SamError(f"model.boxes_per_forward: must be >= 1, got {boxes_per_forward}")
        self.precision_name, self.precision_reason = resolve_dtype_name(precision, accelerator_device("auto"))
        self.save_hyperparameters({"path": path, "precision": self.precision_name, "multimask": multimask})
        self.multimask, self.boxes_per_forward = multimask, boxes_per_forward
        self.segmenter = load_box_segmenter(path, self.precision_name)
        self.model = self.segmenter.model  # registered, so that Lightning moves it and the writer hashes it

    @torch.no_grad()
    def predict_images(self, samples: list[dict]) -> list[list[dict]]:
        """Per image, per box in order: {x0, y0, mask (bool region), score, degenerate}."""
        if not samples:
            return []
        pixel_values = torch.stack([s["pixel_values"] for s in samples])

        def embed(chunk: slice) -> list:
            embeddings = self.segmenter.embed(pixel_values[chunk].to(self.device, non_blocking=True))
            return [rows_of(embeddings, slice(i, i + 1)) for i in range(chunk.stop - chunk.start)]

        per_image = [e for part in map_chunks(embed, len(samples), len(samples)) for e in part]
        return [self._image_results(sample, embeddings) for sample, embeddings in zip(samples, per_image)]

    def _image_results(self, sample: dict, embeddings) -> list[dict]:
        height, width = size = tuple(sample["image"].shape[1:])
        boxes = sample["boxes"].tolist()
        degenerate = [is_degenerate(box, height, width) for box in boxes]
        prompted = [i for i, d in enumerate(degenerate) if not d]
        masks, ious = segment_boxes(
            self.segmenter,
            embeddings,
            sample["prompt_boxes"][prompted],
            size,
            sample["resized_size"],
            self.multimask,
            self.boxes_per_forward,
        )
        predicted = dict(zip(prompted, zip(masks.numpy(), ious.tolist())))
        results = []
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            if degenerate[i]:
                mask, score = box_mask([x0, y0, x1 - x0, y1 - y0], height, width), 0.0
            else:
                mask, score = predicted[i]
            left, top, region = mask_region(mask)
            results.append({"x0": left, "y0": top, "mask": region, "score": score, "degenerate": degenerate[i]})
        return results

    # The same per-image outputs as MAL's (ids plus `results` or `error`), which MaskLabelWriter writes.
    predict_step = MALModule.predict_step
