"""Shared fixtures for the Grounding DINO tests: a tiny random model saved as a local HF directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gdino.model import small_config

SMALL_SIZE = {"shortest_edge": 96, "longest_edge": 160}  # image_size for the 96x128 test images
VOCAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "bert-base-uncased"
needs_vocab = pytest.mark.skipif(
    not (VOCAB_DIR / "vocab.txt").is_file(), reason=f"bert-base-uncased vocab not found at {VOCAB_DIR}"
)


def tiny_model(seed: int = 0, max_text_len: int = 32):
    from transformers import GroundingDinoForObjectDetection

    torch.manual_seed(seed)
    return GroundingDinoForObjectDetection(small_config(max_text_len)).eval()


def save_tiny_model_dir(path: Path, seed: int = 0, max_text_len: int = 32) -> Path:
    """Save model, tokenizer and image processor as a local HF directory (what a user downloads)."""
    from transformers import BertTokenizerFast, GroundingDinoImageProcessor, GroundingDinoProcessor

    tiny_model(seed, max_text_len).save_pretrained(path)
    processor = GroundingDinoProcessor(GroundingDinoImageProcessor(), BertTokenizerFast.from_pretrained(VOCAB_DIR))
    processor.save_pretrained(path)
    return Path(path)


def to_idea_layout(hf_state: dict) -> dict:
    """Rewrite a transformers state dict in the original IDEA layout (the converter's rules backwards).

    Fused tensors are rebuilt by concatenating their q/k/v parts; the result carries the `module.`
    prefix and sits under `model`, as in groundingdino_swint_ogc.pth.
    """
    from gdino.convert import RENAMES, SPLITS, fill_pattern, pattern_regex

    state, done = {}, set()
    for idea, parts in SPLITS:
        regex = pattern_regex(parts[0], full=True)
        for key in hf_state:
            match = regex.match(key)
            if match:
                names = [fill_pattern(p, match.groups()) for p in parts]
                state[fill_pattern(idea, match.groups())] = torch.cat([hf_state[n] for n in names])
                done.update(names)
    rules = [(pattern_regex(hf), idea) for idea, hf in RENAMES]
    for key, value in hf_state.items():
        if key in done or "swin.layernorm." in key:  # the IDEA backbone has no final norm
            continue
        for regex, idea in rules:
            match = regex.match(key)
            if match:
                state[fill_pattern(idea, match.groups()) + key[match.end() :]] = value.clone()
                break
        else:
            raise KeyError(f"no IDEA name for {key}")
    return {"model": {f"module.{k}": v for k, v in state.items()}}
