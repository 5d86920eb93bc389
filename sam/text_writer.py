"""Write SAM 3's labels as Grounding DINO's writer does (gdino.writer.CocoPredictionWriter: COCO JSON, optional
ODVG JSONL + labelmap.json, per-rank shards, resume, exactly-once merge), each annotation with its mask:
`segmentation` (compressed RLE) and `area` (the mask's pixels; Grounding DINO's is the box's), `score` kept."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

from gdino.writer import CocoPredictionWriter


class MaskedCocoWriter(CocoPredictionWriter):
    """CocoPredictionWriter whose annotations carry their masks (see the module docstring)."""

    def _annotations(self, shards, odvg, vocabulary) -> Iterator[dict]:
        detections = (d for record in shards if "error" not in record for d in record["detections"])
        for annotation, detection in zip(super()._annotations(shards, odvg, vocabulary), detections, strict=True):
            yield {**annotation, "segmentation": detection["segmentation"], "area": detection["mask_area"]}

    def merge(self, trainer) -> dict:
        with contextlib.redirect_stdout(io.StringIO()):  # its message names Grounding DINO
            summary = super().merge(trainer)
        skipped = f"; {len(summary['skipped'])} images skipped, listed in {self.errors_path}"
        print(
            f"SAM 3 labelled {summary['images']} images with {summary['boxes']} instances (boxes and masks); "
            f"wrote {self.output}" + (skipped if summary["skipped"] else "")
        )
        return summary
