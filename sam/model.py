"""Load a box-promptable Segment Anything model (SAM, SAM-HQ, SAM 2, EdgeTAM) from a local Hugging Face
directory, and the three calls the labeler makes of it: embed images, decode boxes, upscale masks.

The family is read from config.json's `model_type`; the model from `AutoModel` (weights only: a
pytorch_model.bin pickle never runs code), the image processor from the directory's
preprocessor_config.json. Nothing is downloaded. Weights are cast to the run's dtype (bf16 on a GPU by
default); masks are upscaled in fp32.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModel

from gdino.model import PRECISIONS, _check_keys
from sam.errors import SamError
from sam.families import FAMILIES, MODEL_TYPES, BoxFamily


@dataclass
class BoxSegmenter:
    model: torch.nn.Module
    image_processor: object
    family: BoxFamily
    dtype: torch.dtype

    @torch.no_grad()
    def embed(self, pixel_values: torch.Tensor):
        """B x 3 x S x S pixel values -> the family's image embeddings (batch first), computed once per image."""
        return self.model.get_image_embeddings(pixel_values.to(self.dtype))

    @torch.no_grad()
    def decode(self, embeddings, boxes: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's embeddings and its N x 4 boxes (model input pixels) -> N x K x h x w mask logits and
        N x K predicted IoUs (K = 3 with `multimask`, else 1), in the model's dtype."""
        out = self.model(**self.family.decoder_inputs(embeddings), input_boxes=boxes[None], multimask_output=multimask)
        return out.pred_masks[0], out.iou_scores[0]

    def upscale(self, logits: torch.Tensor, original_size, resized_size) -> torch.Tensor:
        """N x h x w logits -> N x H x W bool masks at the image's size (the processor's post-processing, fp32)."""
        return self.family.upscale(self.image_processor, logits[:, None].float(), original_size, resized_size)[:, 0]


def read_model_type(path: str | Path) -> str:
    """config.json's `model_type` in the directory `path`; SamError when there is no such directory or file."""
    path = Path(path)
    if not path.is_dir():
        raise SamError(f"model.path: {path} is not a directory (expected a Hugging Face model directory)")
    config = path / "config.json"
    if not config.is_file():
        raise SamError(f"model.path: {path} has no config.json (expected a Hugging Face model directory)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise SamError(f"model.path: {config} is not a readable config: {e}") from None
    return model_type


def load_model_dir(path: str | Path, dtype_name: str) -> torch.nn.Module:
    """The Hugging Face model in `path`, its keys checked, cast to `dtype_name` (fp32, bf16, fp16), in eval mode."""
    if dtype_name not in PRECISIONS:
        raise SamError(f"model.precision: must be one of {', '.join(PRECISIONS)}; got {dtype_name!r}")
    try:  # weights_only: a pytorch_model.bin is a pickle; never run its code (model.safetensors is read first)
        model, info = AutoModel.from_pretrained(
            path, local_files_only=True, output_loading_info=True, weights_only=True
        )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise SamError(f"model.path: cannot load {path}: {e}") from None
    _check_keys(path, info["missing_keys"], info["unexpected_keys"], info.get("mismatched_keys", ()))
    return model.to(PRECISIONS[dtype_name]).eval()


def load_image_processor(path: Path):
    try:
        return AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SamError(f"model.path: {path} has no usable image processor (preprocessor_config.json): {e}") from None


def load_box_segmenter(path: str, dtype_name: str = "fp32") -> BoxSegmenter:
    """Model and image processor of a SAM, SAM-HQ, SAM 2 or EdgeTAM directory; SamError for anything else."""
    source = Path(path)
    model_type = read_model_type(source)
    if model_type not in MODEL_TYPES:
        raise SamError(
            f"model.path: {source} holds a {model_type!r} model; box prompts need one of "
            f"{', '.join(MODEL_TYPES)} (SAM 3 labels text: `python -m sam label`)"
        )
    family = FAMILIES[MODEL_TYPES[model_type]]
    image_processor = load_image_processor(source)
    model = load_model_dir(source, dtype_name)
    return BoxSegmenter(model, image_processor, family, PRECISIONS[dtype_name])
