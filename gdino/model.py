"""Load a Grounding DINO detector with its tokenizer and image processor, from local files only.

Two sources: a Hugging Face directory (Grounding DINO or MM-Grounding-DINO, picked by the Auto
classes from config.json), or an original IDEA `.pth` with a named architecture and a local vocab
directory. A checkpoint that does not fit the architecture is an error listing the keys at fault.
Either way the model inverts sigmoids and the processor resizes images as the original code does
(gdino.fidelity), so the same trained weights give the same labels from either source.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForZeroShotObjectDetection,
    AutoTokenizer,
    BertConfig,
    BertTokenizerFast,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    SwinConfig,
)

from gdino.convert import key_listing, load_idea_checkpoint
from gdino.deformable import use_level_sampling
from gdino.errors import GDinoError
from gdino.fidelity import IdeaImageProcessor, use_original_numerics

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Swin backbones of the two released IDEA checkpoints (groundingdino_swint_ogc / swinb_cogcoor).
ARCHITECTURES = {
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
    "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
}
# Present in one layout and recomputed (or unused) in the other.
IGNORABLE_MISSING = ("swin.layernorm.",)


@dataclass
class Detector:
    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    dtype: torch.dtype

    @property
    def max_text_len(self) -> int:
        return self.model.config.max_text_len


def small_config(max_text_len: int = 32) -> GroundingDinoConfig:
    """The smallest Grounding DINO that transformers 5.x accepts (decoder_layers >= 2), for tests,
    benchmarks and the notebook: it builds with random weights and downloads nothing."""
    return GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=10,
        max_text_len=max_text_len,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
    )


def idea_config(architecture: str) -> GroundingDinoConfig:
    """The transformers config matching an original IDEA checkpoint, or one read from a config.json."""
    if architecture in ARCHITECTURES:
        backbone = SwinConfig(out_indices=[2, 3, 4], **ARCHITECTURES[architecture])
        return GroundingDinoConfig(backbone_config=backbone)
    path = Path(architecture)
    if path.is_file():
        return GroundingDinoConfig.from_dict(json.loads(path.read_text()))
    raise GDinoError(f"model.architecture: {architecture!r} is neither tiny, base nor a config.json file")


def _check_keys(source, missing, unexpected, mismatched=()) -> None:
    missing = [k for k in missing if not any(part in k for part in IGNORABLE_MISSING)]
    problems = []
    if missing:
        problems.append(key_listing("missing keys", missing))
    if unexpected:
        problems.append(key_listing("unexpected keys", unexpected))
    if mismatched:
        problems.append(key_listing("keys with mismatched shapes", [str(m) for m in mismatched]))
    if problems:
        raise GDinoError(f"{source}: checkpoint does not fit the model:\n" + "\n".join(problems))


def _load_hf_dir(path: Path):
    if not (path / "config.json").is_file():
        raise GDinoError(f"model.path: {path} has no config.json (expected a Hugging Face model directory)")
    try:
        # weights_only: a pytorch_model.bin is a pickle; never run its code (model.safetensors is read first)
        model, info = AutoModelForZeroShotObjectDetection.from_pretrained(
            path, local_files_only=True, output_loading_info=True, weights_only=True
        )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise GDinoError(f"model.path: cannot load {path}: {e}") from None
    _check_keys(path, info["missing_keys"], info["unexpected_keys"], info.get("mismatched_keys", ()))
    return model


def _load_idea(path: Path, architecture: str | None):
    if not architecture:
        raise GDinoError("model.architecture: required for an original .pth checkpoint (tiny, base or config.json)")
    state = load_idea_checkpoint(path)  # read (and refuse an unsafe file) before building the model
    model = GroundingDinoForObjectDetection(idea_config(architecture))
    expected = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    _check_keys(path, set(expected) - set(state), set(state) - set(expected), mismatched)
    model.load_state_dict(state, strict=False)
    return model


def _load_tokenizer(directory: Path):
    """The directory's tokenizer; a bare vocab.txt (as for IDEA checkpoints) means BERT WordPiece."""
    has_config = (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file()
    if not has_config and not (directory / "vocab.txt").is_file():
        raise GDinoError(f"model.tokenizer: {directory} has no tokenizer files (tokenizer.json or vocab.txt)")
    try:
        if has_config:
            return AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return BertTokenizerFast.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise GDinoError(f"model.tokenizer: cannot load a tokenizer from {directory}: {e}") from None


def _load_image_processor(directory: Path | None) -> IdeaImageProcessor:
    """IDEA's PIL preprocessing with the directory's own resize/normalise settings, or with the Grounding
    DINO defaults (shorter side 800, longer <= 1333, ImageNet mean/std) when it has none (or for a .pth)."""
    if directory is None:
        return IdeaImageProcessor()
    try:
        return IdeaImageProcessor.from_pretrained(directory, local_files_only=True)
    except OSError:
        return IdeaImageProcessor()


def load_detector(
    path: str, architecture: str | None = None, tokenizer: str | None = None, precision: str = "fp32"
) -> Detector:
    """Load model, tokenizer and image processor; cast the model to `precision`, in eval mode."""
    if precision not in PRECISIONS:
        raise GDinoError(f"model.precision: must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    source = Path(path)
    if source.is_dir():
        model = _load_hf_dir(source)
    elif source.is_file():
        model = _load_idea(source, architecture)
    else:
        raise GDinoError(f"model.path: {source} does not exist")
    token_dir = Path(tokenizer) if tokenizer else (source if source.is_dir() else None)
    if token_dir is None:
        raise GDinoError("model.tokenizer: required for a .pth checkpoint (a directory with vocab.txt)")
    image_processor = _load_image_processor(source if source.is_dir() else None)
    dtype = PRECISIONS[precision]
    model = model.to(dtype).eval()
    use_level_sampling(model)
    use_original_numerics(model)
    return Detector(model, _load_tokenizer(token_dir), image_processor, dtype)
