"""Stream labeling results to disk and assemble the final files atomically.

Each rank appends its records to its own JSONL shard as batches finish (nothing accumulates in
memory). At the end rank 0 merges the shards in global batch order, which does not depend on the
number of ranks, and streams the COCO file (plus optional ODVG JSONL) through temporary files that
replace the destinations only when complete. Same input and settings -> byte-identical files.
"""

from __future__ import annotations

import heapq
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from auto_label.visualize import draw_overlay, save_rgb
from auto_label.writers import JsonlWriter, atomic_write, check_writable, dumps, read_jsonl, write_coco


class CocoPredictionWriter(BasePredictionWriter):
    """Write labels as COCO JSON; optionally ODVG JSONL + labelmap.json and overlay pictures.

    Args:
        output: COCO JSON to write; `<output stem>.errors.jsonl` beside it lists skipped images.
        odvg_path: also write TAO's ODVG JSONL here, with labelmap.json in the same folder.
        visualize_dir: also save each image with its boxes, class names and scores here.
    """

    def __init__(self, output: str, odvg_path: str | None = None, visualize_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.odvg_path = Path(odvg_path) if odvg_path else None
        self.visualize_dir = Path(visualize_dir) if visualize_dir else None
        self.errors_path = self.output.with_name(self.output.stem + ".errors.jsonl")
        self.shard_dir = self.output.with_name(f".{self.output.name}.shards")
        self._shard: JsonlWriter | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        trainer.predict_loop.return_predictions = False  # the records live on disk, not in a list
        for directory in {
            self.output.parent,
            self.odvg_path.parent if self.odvg_path else None,
            self.visualize_dir,
        }:
            if directory is not None:
                check_writable(directory)

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.shard_dir.exists():
            shutil.rmtree(self.shard_dir)  # leftovers of an interrupted run
        trainer.strategy.barrier()
        self._shard = JsonlWriter(self.shard_dir / f"rank{trainer.global_rank:05d}.jsonl")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        global_batch = batch_idx * trainer.world_size + trainer.global_rank  # see SizeGroupedBatchSampler
        for position, record in enumerate(prediction):
            record["seq"] = [global_batch, position]
        self._shard.write(prediction)
        if self.visualize_dir is not None:
            for record, sample in zip(prediction, batch):
                if "error" not in record:
                    self._visualize(record, sample["image"])

    def _visualize(self, record: dict, image) -> None:
        dets = record["detections"]
        overlay = draw_overlay(
            image,
            boxes_xywh=[d["bbox"] for d in dets],
            labels=[f"{d['class']} {d['score']:.2f}" for d in dets],
        )
        path = (self.visualize_dir / record["file_name"]).with_suffix(".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_rgb(path, overlay)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._shard.close()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.merge(trainer.datamodule.vocabulary)
            shutil.rmtree(self.shard_dir)
        trainer.strategy.barrier()

    def _records(self) -> Iterator[dict]:
        shards = sorted(self.shard_dir.glob("rank*.jsonl"))
        return heapq.merge(*(read_jsonl(s) for s in shards), key=lambda r: r["seq"])

    def merge(self, vocabulary) -> None:
        """Two streaming passes over the shards: image list and errors, then annotations."""
        images = []
        with atomic_write(self.errors_path) as errors:
            for record in self._records():
                if "error" in record:
                    errors.write(dumps({"file_name": record["file_name"], "error": record["error"]}) + "\n")
                else:
                    images.append(
                        (
                            record["index"],
                            {
                                "id": record["image_id"],
                                "file_name": record["file_name"],
                                "width": record["width"],
                                "height": record["height"],
                            },
                        )
                    )
        images.sort(key=lambda pair: pair[0])
        header = {"images": [image for _, image in images], "categories": vocabulary.categories}
        if self.odvg_path is None:
            write_coco(self.output, header, self._annotations(None, vocabulary))
            return
        labelmap = {str(i): name for i, name in enumerate(vocabulary.class_names)}
        with atomic_write(self.odvg_path.with_name("labelmap.json")) as f:
            f.write(json.dumps(labelmap, indent=1, ensure_ascii=False) + "\n")
        with atomic_write(self.odvg_path) as odvg:
            write_coco(self.output, header, self._annotations(odvg, vocabulary))

    def _annotations(self, odvg, vocabulary) -> Iterator[dict]:
        """COCO annotations in merge order with ids 1..N; ODVG lines written along the way."""
        label_of = {cid: i for i, cid in enumerate(vocabulary.category_ids)}
        ann_id = 0
        for record in self._records():
            if "error" in record:
                continue
            if odvg is not None:
                odvg.write(dumps(odvg_line(record, label_of, vocabulary.grounding)) + "\n")
            for det in record["detections"]:
                ann_id += 1
                x, y, w, h = det["bbox"]
                yield {
                    "id": ann_id,
                    "image_id": record["image_id"],
                    "category_id": det["category_id"],
                    "bbox": det["bbox"],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "score": det["score"],
                    "pass": det["pass"],
                    "threshold": det["threshold"],
                }


def odvg_line(record: dict, label_of: dict[int, int], grounding: bool) -> dict:
    """TAO's ODVG format: boxes as [x1, y1, x2, y2]; closed-set `detection` or grounding `regions`."""
    line = {"file_name": record["file_name"], "height": record["height"], "width": record["width"]}

    def xyxy(bbox):
        x, y, w, h = bbox
        return [x, y, round(x + w, 2), round(y + h, 2)]

    dets = record["detections"]
    if grounding:
        line["grounding"] = {
            "caption": record.get("caption") or " . ".join(d["prompt"] for d in dets),
            "regions": [{"bbox": xyxy(d["bbox"]), "phrase": d["prompt"]} for d in dets],
        }
    else:
        line["detection"] = {
            "instances": [
                {"bbox": xyxy(d["bbox"]), "label": label_of[d["category_id"]], "category": d["class"]}
                for d in dets
            ]
        }
    return line
