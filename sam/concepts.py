"""SAM 3 (transformers' Sam3Model) as the labeler asks it: every instance of one text concept in some images.

A forward answers one concept (a noun phrase) for a batch of images: per image, its DETR queries' boxes,
scores and mask logits. Here the ViT and FPN run once per batch of images (`embed`), the CLIP text encoder
once per concept (`concept`, kept in a bounded table), and each concept's forward takes the rows of the
images that ask it. Scores and masks follow transformers' `Sam3ImageProcessor.post_process_instance_segmentation`
(image_processing_sam3.py): score = sigmoid(query logit) x sigmoid(presence logit); mask = bilinear
upscale of sigmoid(mask logits) to the image size, > 0.5; boxes (x1 y1 x2 y2, 0..1) times the image size
(here also clipped to the image).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from gdino.model import PRECISIONS
from sam.errors import SamError
from sam.model import load_model_dir, read_model_type

MASK_THRESHOLD = 0.5  # on mask probabilities: post_process_instance_segmentation's default
TEXT_LENGTH = 32  # Sam3Processor pads every text to 32 tokens (CLIP's context of the released model)
CONCEPT_CACHE = 1024  # text encodings kept (noun-chunk runs have new phrases on every image)


@dataclass
class Answer:
    """One image's answer to one concept: its queries with score > a floor, best first.

    boxes: N x 4 x1 y1 x2 y2 in image pixels (float32), scores: N (float32), mask_logits: N x h x w (model dtype).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    mask_logits: torch.Tensor


def vision_rows(vision: Sam3VisionEncoderOutput, rows: list[int]) -> Sam3VisionEncoderOutput:
    """The FPN features and position encodings of the images `rows` (all that Sam3Model's forward reads)."""
    index = torch.tensor(rows, device=vision.fpn_hidden_states[0].device)
    return Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(f.index_select(0, index) for f in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(p.index_select(0, index) for p in vision.fpn_position_encoding),
    )


def upscale_masks(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x h x w mask logits -> N x H x W bool masks (post_process_instance_segmentation's rule, in fp32)."""
    if not len(mask_logits):
        return torch.zeros(0, *size, dtype=torch.bool)
    probabilities = F.interpolate(mask_logits.float().sigmoid()[None], size=size, mode="bilinear", align_corners=False)
    return probabilities[0] > MASK_THRESHOLD


class ConceptSegmenter:
    """A loaded SAM 3: model (in `dtype`, eval mode), image processor and tokenizer."""

    def __init__(self, model, processor, dtype: torch.dtype):
        self.model, self.processor, self.dtype = model, processor, dtype
        self.concepts: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.text_runs = 0  # for tests and benchmarks

    @torch.no_grad()
    def embed(self, images: list) -> Sam3VisionEncoderOutput:
        """H x W x 3 uint8 images (one size) -> their FPN features, computed once for every concept."""
        inputs = self.processor.image_processor(images, return_tensors="pt", input_data_format="channels_last")
        pixel_values = inputs["pixel_values"].to(self.model.device, self.dtype)
        return self.model.get_vision_features(pixel_values=pixel_values)

    @torch.no_grad()
    def concept(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 x 32 x D projected text features, 1 x 32 attention mask) of a concept, encoded once."""
        if text not in self.concepts:
            tokens = self.processor.tokenizer(
                [text], return_tensors="pt", padding="max_length", max_length=TEXT_LENGTH, truncation=True
            ).to(self.model.device)
            features = self.model.get_text_features(**tokens)
            self.text_runs += 1
            if len(self.concepts) >= CONCEPT_CACHE:
                self.concepts.popitem(last=False)
            self.concepts[text] = (features.pooler_output, tokens["attention_mask"])
        self.concepts.move_to_end(text)
        return self.concepts[text]

    @torch.no_grad()
    def answer(self, vision, rows: list[int], text: str, sizes: list[tuple[int, int]], floor: float) -> list[Answer]:
        """The images `rows` of `vision` asked for `text`: per image (of size `sizes[i]`), its queries scoring
        above `floor`."""
        features, mask = self.concept(text)
        n = len(rows)
        out = self.model(
            vision_embeds=vision_rows(vision, rows),
            text_embeds=BaseModelOutputWithPooling(pooler_output=features.expand(n, -1, -1)),
            attention_mask=mask.expand(n, -1),
        )
        scores = out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()
        answers = []
        for i, (height, width) in enumerate(sizes):
            keep = torch.nonzero(scores[i] > floor).flatten()
            keep = keep[scores[i, keep].argsort(descending=True, stable=True)]
            scale = torch.tensor([width, height, width, height], device=scores.device, dtype=torch.float32)
            boxes = torch.minimum((out.pred_boxes[i, keep].float() * scale).clamp_min(0), scale)
            answers.append(Answer(boxes, scores[i, keep], out.pred_masks[i, keep]))
        return answers


def load_concept_segmenter(path: str, dtype_name: str = "fp32") -> ConceptSegmenter:
    """SAM 3's model, image processor and tokenizer from a local Hugging Face directory; SamError otherwise."""
    model_type = read_model_type(path)
    if model_type != "sam3":
        raise SamError(
            f"model.path: {path} holds a {model_type!r} model; text prompts need SAM 3 (model_type sam3). "
            "Box prompts: `python -m sam predict`"
        )
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise SamError(f"model.path: {path} has no usable SAM 3 processor (images and tokenizer): {e}") from None
    model = load_model_dir(path, dtype_name)
    return ConceptSegmenter(model, processor, PRECISIONS[dtype_name])
