"""SAM as a stage of `auto_label generate`: box -> mask from a COCO file (`autolabel_type: sam`), or the mask
stage of `text2mask` after Grounding DINO (`mask_labeler: sam`). `sam_stage` builds what a Lightning predict
run needs (module, data, writer), reading and checking the boxes file before any weights; sam.spec holds the
spec's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labelkit.writers import check_writable
from sam.data import SamBoxDataModule
from sam.module import SamBoxLabeler
from sam.writer import SamMaskWriter


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
