"""SAM as a stage of `auto_label generate`: box -> mask from a COCO file (`autolabel_type: sam`), or the mask
stage of `text2mask` after Grounding DINO (`mask_labeler: sam`). Our extension of TAO's spec, which has no
Segment Anything labeler.

`SPEC_SCHEMA` is the `sam` block of the spec with its defaults, `MASK_LABELERS` the values of the top-level
`mask_labeler` key, `spec_problem` the cross-key checks, and `sam_stage` builds what a Lightning predict run
needs (module, data, writer), reading and checking the boxes file before any weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auto_label.writers import check_writable
from sam.boxes import MULTIMASK_CHOICES
from sam.data import SamBoxDataModule
from sam.module import SamBoxLabeler
from sam.writer import SamMaskWriter

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
    if spec.get("sam.multimask") not in MULTIMASK_CHOICES:
        return f"sam.multimask must be one of {', '.join(MULTIMASK_CHOICES)}, got {spec.get('sam.multimask')!r}"
    if spec.get("sam.boxes_per_forward") < 1:
        return f"sam.boxes_per_forward must be >= 1, got {spec.get('sam.boxes_per_forward')}"
    return None


@dataclass
class SamStage:
    module: SamBoxLabeler
    data: SamBoxDataModule
    writer: SamMaskWriter
    output: Path


def sam_stage(
    checkpoint: str,
    ann_path: str | Path,
    img_dir: str | Path,
    output: str | Path,
    *,
    fresh: bool = False,
    batch_size: int = 2,
    num_workers: int = 2,
    precision: str = "auto",
    multimask: str = "best",
    boxes_per_forward: int = 64,
    data_options: dict | None = None,
) -> SamStage:
    """The module, data and writer of one SAM run over `ann_path`'s boxes, writing `output`.

    The output folder is checked for writing and the boxes file read and validated first, so that a bad file
    stops the run before any weights are read. `data_options` go to the data module (strict,
    allow_outside_image_dir, max_pixels). The module casts its own weights (Lightning's precision stays 32-true);
    its `precision_name` and `precision_reason` say what `precision` became.
    """
    output = Path(output)
    check_writable(output.parent)
    data = SamBoxDataModule(
        predict_ann_path=str(ann_path),
        predict_img_dir=str(img_dir),
        batch_size=batch_size,
        num_workers=num_workers,
        **(data_options or {}),
    )
    data.load_annotations("predict")
    module = SamBoxLabeler(str(checkpoint), precision, multimask, boxes_per_forward)
    return SamStage(module, data, SamMaskWriter(str(output), fresh=fresh), output)
