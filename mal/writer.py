"""Write MAL's masks as the input COCO file with every box's segmentation replaced by the predicted RLE.

Each process appends one line per finished image to its own shard (labelkit.shards), flushed after
every batch. A run started again after a crash or a kill skips the images whose lines are complete and
labels the rest; `fresh=True` starts over. At the end rank 0 merges the shards by image position into
the final file, written atomically, so the output depends neither on the number of processes nor on
interruptions. Output order: images as in the input, each image's annotations in input order; crowd
annotations pass through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from labelkit.coco import CocoFile
from labelkit.masks import masks_to_rles
from labelkit.shards import ShardedPredictionWriter, ShardError, file_digest, weights_digest
from labelkit.writers import check_writable, write_coco, write_jsonl
from mal.data import reaches_into_image
from mal.module import full_masks

# A box may stick out of its image by this much (rounded coordinates) without being called clipped.
CLIP_TOLERANCE = 0.05


def box_flag(bbox_xywh, height: int, width: int, degenerate: bool) -> str | None:
    """`mal_flag` of a box: outside_image (no mask: the box holds no pixel of the image), degenerate_box
    (less than a pixel inside: its box mask), clipped_box (predicted from its part inside the image)."""
    if not reaches_into_image(bbox_xywh, width, height):
        return "outside_image"
    x, y, w, h = bbox_xywh
    if degenerate:
        return "degenerate_box"
    t = CLIP_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return "clipped_box"
    return None


def labelled_annotations(coco: CocoFile, ann_indices: list[int], size, results) -> list[dict]:
    """One image's labels: the input annotations with predicted RLE, mask area, mal_score and any mal_flag."""
    height, width = size
    anns = [coco.annotations[index] for index in ann_indices]
    flags = [box_flag(a["bbox"], height, width, r["degenerate"]) for a, r in zip(anns, results)]
    empty_outside = [np.zeros_like(r["mask"]) if f == "outside_image" else r["mask"] for r, f in zip(results, flags)]
    masks = full_masks([(r["x0"], r["y0"], m) for r, m in zip(results, empty_outside)], height, width)
    records = []
    for index, ann, flag, result, rle, area in zip(
        ann_indices, anns, flags, results, masks_to_rles(masks), masks.sum(axis=(1, 2))
    ):
        score = 0.0 if flag == "outside_image" else round(result["score"], 5)
        ann = {k: v for k, v in ann.items() if k != "mal_flag"}  # a flag of an earlier run is not this one's
        ann = {**ann, "segmentation": rle, "area": int(area), "mal_score": score}
        if flag:
            ann["mal_flag"] = flag
        records.append({"index": index, "annotation": ann})
    return records


# Model options that only cut the work in pieces; the output is the same whatever their value.
WORK_SPLIT = ("max_boxes_per_forward",)
FLAG_COUNTS = {"degenerate_box": "degenerate_boxes", "clipped_box": "clipped_boxes", "outside_image": "outside_boxes"}


class MaskLabelWriter(ShardedPredictionWriter):
    """Stream predictions to disk as they come (nothing accumulates in memory); resume after a kill.

    Args:
        label_dump_path: the COCO JSON to write. Skipped images are listed in `errors.jsonl` beside it.
        fresh: discard the results of an interrupted earlier run instead of resuming from them.
        write_in_thread: RLE-encode and write each batch in a thread while the next one is predicted; null:
            when the model is on an accelerator. On a CPU the model already uses every core: measured in bf16
            on an AVX512-BF16 CPU, the thread lost (BENCHMARKS.md); in fp32 (`precision: auto` on a CPU without
            native bf16) the model is slower and the writer's share of the loop smaller still, so the default
            holds in either precision.
    """

    def __init__(self, label_dump_path: str | None = None, fresh: bool = False, write_in_thread: bool | None = None):
        self.label_dump_path = Path(label_dump_path) if label_dump_path else None
        shards = self.label_dump_path.with_name(f".{self.label_dump_path.name}.shards") if label_dump_path else "."
        super().__init__(shards, "image_pos", fresh, write_in_thread=write_in_thread)

    @property
    def errors_path(self) -> Path:
        return self.label_dump_path.with_name("errors.jsonl")

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "predict":
            if self.label_dump_path is None:
                raise ValueError("writer.label_dump_path is required for predict")
            check_writable(self.label_dump_path.parent)
        super().setup(trainer, pl_module, stage)

    def fingerprint(self, trainer, pl_module) -> dict:
        """What decides the output: input file, images, prediction settings, precision and weights; not how the
        work is cut (images per batch, boxes per forward, processes): a box's mask and score do not depend on
        it (tests/test_output_independence.py), so a resumed run may cut it otherwise."""
        data = trainer.datamodule
        return {
            "precision": str(trainer.precision),
            "input": file_digest(data.predict_coco.path),
            "image_dir": str(data.predict_coco.image_dir.resolve()),
            "data": {k: data.hparams[k] for k in ("crop_size", "test_margin_rate", "max_pixels")},
            "model": {k: v for k, v in pl_module.hparams.items() if not k.startswith("_") and k not in WORK_SPLIT},
            "weights": weights_digest(pl_module),
        }

    def skip_reason(self, record: dict) -> str | None:
        error = record.get("error")
        return f"{error['file_name']}: {error['reason']}" if error else None

    def records(self, trainer, prediction, batch) -> list[dict]:
        coco = trainer.datamodule.predict_coco
        records = []
        for image in prediction:
            record = {"image_pos": image["image_pos"]}
            if "error" in image:
                record["error"] = {
                    "image_id": image["image_id"],
                    "file_name": image["file_name"],
                    "reason": image["error"],
                    "annotation_ids": [coco.annotations[i]["id"] for i in image["ann_indices"]],
                }
            else:
                record["labels"] = labelled_annotations(coco, image["ann_indices"], image["size"], image["results"])
            records.append(record)
        return records

    def merge(self, trainer) -> dict:
        """Stream the final COCO file and the error list from the shards; return the counts."""
        coco = trainer.datamodule.predict_coco
        counted = ("images", "boxes", "masks", "images_this_run", "boxes_this_run", *FLAG_COUNTS.values())
        stats = dict.fromkeys(counted, 0)
        errors: list[dict] = []

        def annotations() -> Iterator[dict]:
            records = self.store.merged()
            pending = next(records, None)
            for image_pos, image in enumerate(coco.images):
                predicted = {}
                if pending is not None and pending["image_pos"] == image_pos:
                    if "error" in pending:
                        errors.append(pending["error"])
                    else:
                        predicted = {r["index"]: r["annotation"] for r in pending["labels"]}
                        stats["images"] += 1
                        if image_pos not in self.resumed:
                            stats["images_this_run"] += 1
                            stats["boxes_this_run"] += len(predicted)
                    pending = next(records, None)
                for index in coco.annotation_indices_by_image[image["id"]]:
                    ann = coco.annotations[index]
                    if index in predicted:
                        label = predicted[index]
                        stats["boxes"] += 1
                        stats["masks"] += label["area"] > 0
                        if "mal_flag" in label:
                            stats[FLAG_COUNTS[label["mal_flag"]]] += 1
                        yield label
                    elif ann.get("iscrowd", 0):
                        yield ann
            if pending is not None:
                raise ShardError(
                    f"{self.store.directory}: a result for image position {pending['image_pos']}, "
                    f"which {coco.path} does not have; rerun with --fresh"
                )

        count = write_coco(self.label_dump_path, coco.data, annotations())
        if errors:
            write_jsonl(self.errors_path, errors)
        else:
            self.errors_path.unlink(missing_ok=True)  # a stale list from an earlier run
        message = (
            f"MAL labelled {stats['boxes']} boxes on {stats['images']} images ({stats['degenerate_boxes']} degenerate "
            f"boxes got their box mask, {stats['clipped_boxes']} boxes were clipped to their image, "
            f"{stats['outside_boxes']} boxes outside their image got no mask); "
            f"wrote {count} annotations to {self.label_dump_path}"
        )
        print(message + (f"; {len(errors)} images skipped, listed in {self.errors_path}" if errors else ""))
        return {**stats, "annotations_written": count, "skipped": errors, "output": str(self.label_dump_path)}
