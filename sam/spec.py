"""The `sam` block of an `auto_label generate` spec: our extension of TAO's spec, which has no Segment Anything
labeler. Light (no model code): auto_label.spec reads it to check a spec before any model is loaded.

- `autolabel_type: sam`: SAM turns the boxes of `sam.inference.ann_path` into masks (as `mal` does with MAL);
- `mask_labeler: mal | sam` (top level): which labeler makes the masks of `text2mask` after Grounding DINO.
"""

from __future__ import annotations

MASK_LABELERS = ("mal", "sam")  # text2mask's mask stage: MAL (trained from boxes) or SAM (pretrained)
SPEC_SCHEMA = {
    "checkpoint": None,  # a local Hugging Face directory of SAM, SAM-HQ, SAM 2 or EdgeTAM
    "results_dir": None,
    "precision": "auto",  # auto | fp32 | bf16 | fp16 (sam.module.SamBoxLabeler)
    "multimask": "best",  # best | first | single (sam.boxes)
    "boxes_per_forward": 64,
    "inference": {
        "ann_path": None,  # autolabel_type sam: the boxes to turn into masks
        "img_dir": None,
        "label_dump_path": None,  # default: <results_dir>/labels.json (text2mask: <results_dir>/sam/labels.json)
        "batch_size": 2,  # images per step; unset: the top-level batch_size
        "num_workers": 2,  # unset: the top-level num_workers
    },
}


def spec_problem(spec, kind: str) -> str | None:
    """What is wrong with the spec's SAM keys for `autolabel_type` `kind` (a message naming the key), or None."""
    uses_sam = kind == "sam" or (kind == "text2mask" and spec.get("mask_labeler") == "sam")
    if spec.get("mask_labeler") not in MASK_LABELERS:
        return f"mask_labeler must be one of {', '.join(MASK_LABELERS)}, got {spec.get('mask_labeler')!r}"
    if not uses_sam:
        return None
    if not spec.get("sam.checkpoint"):
        return f"sam.checkpoint (a Hugging Face model directory) is required for autolabel_type {kind}"
    if kind == "sam":
        missing = [key for key in ("ann_path", "img_dir") if not spec.get(f"sam.inference.{key}")]
        if missing:
            return f"sam.inference.{missing[0]} is required for autolabel_type sam"
    if kind == "text2mask":
        for key in ("sam.inference.ann_path", "sam.inference.img_dir"):
            if spec.is_set(key):
                return f"{key} is not used by text2mask (the boxes come from Grounding DINO); remove it"
    from sam.boxes import MULTIMASK_CHOICES  # imported here: a spec that uses no SAM imports no torch

    if spec.get("sam.multimask") not in MULTIMASK_CHOICES:
        return f"sam.multimask must be one of {', '.join(MULTIMASK_CHOICES)}, got {spec.get('sam.multimask')!r}"
    if spec.get("sam.boxes_per_forward") < 1:
        return f"sam.boxes_per_forward must be >= 1, got {spec.get('sam.boxes_per_forward')}"
    return None
