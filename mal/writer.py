"""Write MAL's masks as the input COCO file with every box's segmentation replaced by the predicted RLE.

Each process appends finished annotations to its own JSONL shard while predicting; at the end the
shards are merged (streamed, by image position) into the final file, written atomically. Output order:
images as in the input, each image's annotations in input order; crowd annotations pass through.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from auto_label.coco import CocoFile
from auto_label.masks import masks_to_rles
from auto_label.writers import JsonlWriter, check_writable, read_jsonl, write_coco, write_jsonl
from mal.module import full_masks

log = logging.getLogger(__name__)


def labelled_annotations(coco: CocoFile, image_pos: int, ann_indices: list[int], size, results) -> list[dict]:
    """Shard records for one image: the input annotations with predicted RLE, mask area and mal_score."""
    height, width = size
    masks = full_masks([(r["x0"], r["y0"], r["mask"]) for r in results], height, width)
    records = []
    for index, result, rle, area in zip(ann_indices, results, masks_to_rles(masks), masks.sum(axis=(1, 2))):
        ann = dict(coco.annotations[index])
        ann.update(segmentation=rle, area=int(area), mal_score=round(result["score"], 5))
        if result["degenerate"]:
            ann["mal_flag"] = "degenerate_box"
        records.append({"image_pos": image_pos, "index": index, "annotation": ann})
    return records


def merged_annotations(coco: CocoFile, shard_paths: list[Path]) -> Iterator[dict]:
    """Stream the final annotations: predicted ones from the shards, crowd ones from the input."""
    records = heapq.merge(*(read_jsonl(p) for p in shard_paths), key=lambda r: (r["image_pos"], r["index"]))
    pending = next(records, None)
    for image_pos, image in enumerate(coco.images):
        predicted = {}
        while pending is not None and pending["image_pos"] == image_pos:
            predicted[pending["index"]] = pending["annotation"]  # a duplicate from another rank is identical
            pending = next(records, None)
        for index in coco.annotation_indices_by_image[image["id"]]:
            ann = coco.annotations[index]
            if index in predicted:
                yield predicted[index]
            elif ann.get("iscrowd", 0):
                yield ann


class MaskLabelWriter(BasePredictionWriter):
    """Stream predictions to disk as they come (nothing accumulates in memory).

    Args:
        label_dump_path: the COCO JSON to write. Skipped images are listed in `errors.jsonl` beside it.
    """

    def __init__(self, label_dump_path: str | None = None):
        super().__init__(write_interval="batch")
        self.label_dump_path = Path(label_dump_path) if label_dump_path else None

    def _shard(self, kind: str, rank: int) -> Path:
        return self.label_dump_path.with_name(f".{self.label_dump_path.name}.{kind}.rank{rank}.jsonl")

    @property
    def errors_path(self) -> Path:
        return self.label_dump_path.with_name("errors.jsonl")

    def on_predict_start(self, trainer, pl_module) -> None:
        if self.label_dump_path is None:
            raise ValueError("writer.label_dump_path is required for predict")
        check_writable(self.label_dump_path.parent)
        trainer.predict_loop.return_predictions = False  # results go to disk, not into a list
        rank = trainer.global_rank
        self.labels = JsonlWriter(self._shard("labels", rank))
        self.errors = JsonlWriter(self._shard("errors", rank))
        self.num_degenerate = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        coco = trainer.datamodule.predict_coco
        for image in prediction:
            if "error" in image:
                ids = [coco.annotations[i]["id"] for i in image["ann_indices"]]
                self.errors.write(
                    [
                        {
                            "image_id": image["image_id"],
                            "file_name": image["file_name"],
                            "reason": image["error"],
                            "annotation_ids": ids,
                        }
                    ]
                )
                continue
            records = labelled_annotations(
                coco, image["image_pos"], image["ann_indices"], image["size"], image["results"]
            )
            self.num_degenerate += sum("mal_flag" in r["annotation"] for r in records)
            self.labels.write(records)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.labels.close()
        self.errors.close()
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return
        coco = trainer.datamodule.predict_coco
        ranks = range(trainer.world_size)
        label_shards = [self._shard("labels", r) for r in ranks]
        error_shards = [self._shard("errors", r) for r in ranks]
        count = write_coco(self.label_dump_path, coco.data, merged_annotations(coco, label_shards))
        errors = [e for p in error_shards for e in read_jsonl(p)]
        errors.sort(key=lambda e: e["image_id"])
        if errors:
            write_jsonl(self.errors_path, errors)
        else:
            self.errors_path.unlink(missing_ok=True)  # a stale list from an earlier run
        for p in label_shards + error_shards:
            p.unlink(missing_ok=True)
        labelled = sum(not a.get("iscrowd", 0) for a in coco.annotations) - sum(
            len(e["annotation_ids"]) for e in errors
        )
        message = (
            f"MAL labelled {labelled} boxes with masks ({self.num_degenerate} degenerate boxes got their "
            f"box mask) on {len(coco.images) - len(errors)} images; wrote {count} annotations to "
            f"{self.label_dump_path}"
        )
        if errors:
            message += f"; {len(errors)} images skipped, listed in {self.errors_path}"
        print(message)
