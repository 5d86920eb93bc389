"""The smallest model of each Segment Anything family that transformers 5.x builds, with random weights.

For tests and benchmarks: nothing is downloaded. Each config keeps the family's architecture (SAM's ViT
with windowed and global attention, SAM-HQ's extra token and early-layer features, SAM 2's Hiera with
three query-pooling stages and its FPN, EdgeTAM's timm RepViT, SAM 3's ViT + CLIP text encoder + DETR
+ mask decoder) at a few thousand parameters and an input of `IMAGE_SIZE` pixels, so that the whole
labeling path runs at speed on one CPU core. `save_tiny` writes a model with its processor as the
Hugging Face directory a user would download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import (
    AutoModel,
    CLIPTokenizer,
    EdgeTamConfig,
    Sam2Config,
    Sam2ImageProcessor,
    Sam2Processor,
    Sam3Config,
    Sam3ImageProcessor,
    Sam3Processor,
    SamConfig,
    SamHQConfig,
    SamHQProcessor,
    SamImageProcessor,
    SamProcessor,
    TimmWrapperConfig,
)

IMAGE_SIZE = 64  # model input side in pixels (1024 for the released SAM / SAM 2 models, 1008 for SAM 3)
BOX_FAMILIES = ("sam", "sam_hq", "sam2", "edgetam")
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 characters byte-level BPE spells bytes with

# SAM's ViT: 8-pixel patches (an 8 x 8 embedding grid), one windowed and one global attention layer.
_SAM_VISION = dict(
    hidden_size=32,
    output_channels=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
    window_size=4,
    global_attn_indexes=[1],
    num_pos_feats=8,
    mlp_dim=32,
)
_PROMPT_ENCODER = dict(hidden_size=16, image_size=IMAGE_SIZE, mask_input_channels=4)
_MASK_DECODER = dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16)
# SAM 2 / EdgeTAM necks: three feature levels at strides 4, 8 and 16.
_LEVELS = [[IMAGE_SIZE // s, IMAGE_SIZE // s] for s in (4, 8, 16)]


def _sam_config() -> SamConfig:
    return SamConfig(
        vision_config=_SAM_VISION,
        prompt_encoder_config={**_PROMPT_ENCODER, "patch_size": 8},
        mask_decoder_config=_MASK_DECODER,
    )


def _sam_hq_config() -> SamHQConfig:
    return SamHQConfig(
        vision_config=_SAM_VISION,
        prompt_encoder_config={**_PROMPT_ENCODER, "patch_size": 8},
        mask_decoder_config={**_MASK_DECODER, "vit_dim": _SAM_VISION["hidden_size"]},
    )


def _hiera() -> dict:
    """SAM 2's Hiera; a global-attention block may not open a stage (its query pooling needs a window)."""
    return dict(
        model_type="sam2_hiera_det_model",
        hidden_size=8,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )


def _repvit() -> TimmWrapperConfig:
    """EdgeTAM's timm RepViT-M1 with one block of 8 to 64 channels a stage."""
    model_args = {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    return TimmWrapperConfig(
        architecture="repvit_m1", model_args={**model_args, "embed_dim": (8, 16, 32, 64), "depth": (1, 1, 1, 1)}
    )


def _sam2_like(config_class, backbone):
    """SAM 2 or EdgeTAM around `backbone`: an FPN neck over its last three stages, SAM's prompt encoder and decoder."""
    neck = dict(backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=_LEVELS, fpn_hidden_size=16)
    return config_class(
        vision_config=dict(backbone_config=backbone, **neck),
        prompt_encoder_config={**_PROMPT_ENCODER, "patch_size": 16},
        mask_decoder_config=_MASK_DECODER,
    )


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer that spells every text byte by byte (no merges): 256 bytes, 256 word-final bytes, and
    the start and end tokens (512, 513), so that any class name tokenizes without a downloaded vocabulary."""
    vocab = {c: i for i, c in enumerate(BYTES)} | {c + "</w>": i + len(BYTES) for i, c in enumerate(BYTES)}
    vocab.update({"<|startoftext|>": 2 * len(BYTES), "<|endoftext|>": 2 * len(BYTES) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[])


def _sam3_config() -> Sam3Config:
    """SAM 3: a 2-layer ViT on 16-pixel patches (4 x 4 tokens, FPN at 16, 8, 4 and 2), a 1-layer CLIP text
    encoder over `tiny_tokenizer`'s 514 tokens, a 1-layer geometry encoder, DETR encoder and decoder of 8 queries."""
    end = 2 * len(BYTES) + 1
    vit = dict(
        model_type="sam3_vit_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=16,
        window_size=2,
        global_attn_indexes=[1],
        pretrain_image_size=32,
    )
    clip = dict(
        model_type="clip_text_model",
        vocab_size=end + 1,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=end - 1,
        eos_token_id=end,
        pad_token_id=end,
    )
    layers = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32)
    return Sam3Config(
        vision_config=dict(backbone_config=vit, fpn_hidden_size=16, backbone_feature_sizes=_LEVELS),
        text_config=clip,
        geometry_encoder_config={**layers, "num_layers": 1, "roi_size": 2},
        detr_encoder_config={**layers, "num_layers": 1},
        detr_decoder_config={**layers, "num_layers": 1, "num_queries": 8},
        mask_decoder_config=dict(hidden_size=16, num_upsampling_stages=2, num_attention_heads=2),
    )


CONFIGS = {
    "sam": _sam_config,
    "sam_hq": _sam_hq_config,
    "sam2": lambda: _sam2_like(Sam2Config, _hiera()),
    "edgetam": lambda: _sam2_like(EdgeTamConfig, _repvit()),
    "sam3": _sam3_config,
}


def tiny_config(family: str):
    """The tiny config of `family` (one of BOX_FAMILIES, or sam3); KeyError for any other name."""
    return CONFIGS[family]()


def tiny_processor(family: str, image_size: int = IMAGE_SIZE):
    """The family's processor at `image_size` (1024 for the released SAM / SAM 2 models, 1008 for SAM 3): SAM /
    SAM-HQ resize the longer side and pad to a square, SAM 2 / EdgeTAM / SAM 3 resize to the square."""
    low_res = image_size // 4
    square = {"height": image_size, "width": image_size}
    if family == "sam3":
        image_processor = Sam3ImageProcessor(size=square, mask_size={"height": low_res, "width": low_res})
        return Sam3Processor(image_processor, tiny_tokenizer())
    if family in ("sam", "sam_hq"):
        image_processor = SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size=square,
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
        return (SamHQProcessor if family == "sam_hq" else SamProcessor)(image_processor)
    return Sam2Processor(Sam2ImageProcessor(size=square, mask_size={"height": low_res, "width": low_res}))


def save_random(path: str | Path, config, processor, seed: int = 0) -> Path:
    """Save a randomly initialised model of `config` and `processor` as a local Hugging Face directory."""
    path = Path(path)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny(path: str | Path, family: str, seed: int = 0) -> Path:
    """Save a tiny model of `family` and its processor as a local Hugging Face directory."""
    return save_random(path, tiny_config(family), tiny_processor(family), seed)
