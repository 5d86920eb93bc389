"""Stream labeling results to disk and assemble the final files atomically.

Each rank appends one line per image to its own shard (labelkit.shards) as batches finish, flushed
after every batch (nothing accumulates in memory). A run started again after a crash or a kill skips
the images whose lines are complete; `fresh=True` starts over. At the end rank 0 merges the shards in
image order, which depends neither on the number of ranks nor on interruptions, and streams the COCO
file (plus optional ODVG JSONL) through temporary files that replace the destinations only when
complete. Same input and settings -> byte-identical files. A box of zero width or height is no label:
it is dropped and counted. The errors file lists the images skipped and the other files of the image
folders, left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from labelkit.shards import MergedShards, ShardedPredictionWriter, weights_digest
from labelkit.visualize import draw_overlay, overlay_path, save_rgb
from labelkit.writers import atomic_write, check_writable, dumps, write_coco


def run_fingerprint(data, labeler) -> dict:
    """What decides the output: the images and the pixel limit (an image over it is skipped), the vocabulary,
    the labeling settings (reused features change scores in the low bits) and the weights."""
    items = hashlib.sha256()
    for item in data.items:
        items.update(dumps([item.image_id, item.file_name, item.prompts]).encode())
        items.update(os.fsencode(item.path) + b"\0")  # the bytes of a name that is not UTF-8 too
    vocab = data.vocabulary
    return {
        "items": items.hexdigest(),
        "max_pixels": data.max_pixels,
        "vocabulary": [vocab.prompts, vocab.prompt_class, vocab.class_names, vocab.category_ids],
        "labeling": {
            "passes": [[p.conf_threshold, p.nms_threshold] for p in labeler.passes],
            "class_thresholds": labeler.class_thresholds,
            "aggregation": [labeler.aggregation, labeler.aggregation_iou, labeler.max_dets],
            "image_size": labeler.image_size,
            "annealing": getattr(labeler, "annealing", "requery"),
            "dtype": str(labeler.input_dtype),
            "reuse_features": getattr(labeler, "reuse_answers", None),  # none in SAM 3 (sam.text_module)
        },
        "weights": weights_digest(labeler.model),
    }


class CocoPredictionWriter(ShardedPredictionWriter):
    """Write labels as COCO JSON; optionally ODVG JSONL + labelmap.json and overlay pictures.

    Args:
        output: COCO JSON to write; `<output stem>.errors.jsonl` beside it lists skipped images.
        odvg_path: also write TAO's ODVG JSONL here, with labelmap.json in the same folder.
        visualize_dir: also save each image with its boxes, class names and scores here.
        fresh: discard the results of an interrupted earlier run instead of resuming from them.
        keep_shards: leave the shards after merging (a chained run removes them when all stages are done).
        write_in_thread: make and write each batch's records in a thread while the next one is predicted;
            null: when the model is on an accelerator (on a CPU the model already uses every core).
    """

    def __init__(
        self,
        output: str,
        odvg_path: str | None = None,
        visualize_dir: str | None = None,
        fresh: bool = False,
        keep_shards: bool = False,
        write_in_thread: bool | None = None,
    ):
        self.output = Path(output)
        shards = self.output.with_name(f".{self.output.name}.shards")
        super().__init__(shards, "index", fresh, keep_shards, write_in_thread)
        self.odvg_path = Path(odvg_path) if odvg_path else None
        self.visualize_dir = Path(visualize_dir) if visualize_dir else None
        self.errors_path = self.output.with_name(self.output.stem + ".errors.jsonl")

    def setup(self, trainer, pl_module, stage: str) -> None:
        for directory in {
            self.output.parent,
            self.odvg_path.parent if self.odvg_path else None,
            self.visualize_dir,
        }:
            if directory is not None:
                check_writable(directory)
        super().setup(trainer, pl_module, stage)

    def fingerprint(self, trainer, pl_module) -> dict:
        return run_fingerprint(trainer.datamodule, pl_module)

    def skip_reason(self, record: dict) -> str | None:
        return f"{record['file_name']}: {record['error']}" if "error" in record else None

    def records(self, trainer, prediction, batch) -> list[dict]:
        prediction = [drop_zero_area(record) for record in prediction]
        if self.visualize_dir is not None:
            for record, sample in zip(prediction, batch):
                if "error" not in record:
                    self._visualize(record, sample["image"])
        return prediction

    def _visualize(self, record: dict, image) -> None:
        dets = record["detections"]
        overlay = draw_overlay(
            image,
            boxes_xywh=[d["bbox"] for d in dets],
            labels=[f"{d['class']} {d['score']:.2f}" for d in dets],
        )
        path = overlay_path(self.visualize_dir, record["file_name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_rgb(path, overlay)

    def merge(self, trainer) -> dict:
        """Two streaming passes over the shards, scanned once: image list and errors, then annotations."""
        vocabulary = trainer.datamodule.vocabulary
        shards = self.store.index()
        images, errors, this_run = [], [], {"images": 0, "boxes": 0}
        zero_area = 0
        left_out = [{"file_name": name, "error": not_an_image(name)} for name in trainer.datamodule.left_out]
        with atomic_write(self.errors_path) as errors_file:
            for record in shards:
                if "error" in record:
                    errors.append({"file_name": record["file_name"], "error": record["error"]})
                    errors_file.write(dumps(errors[-1]) + "\n")
                else:
                    zero_area += record.get("zero_area_boxes", 0)
                    if record["index"] not in self.resumed:
                        this_run["images"] += 1
                        this_run["boxes"] += len(record["detections"])
                    images.append(
                        {
                            "id": record["image_id"],
                            "file_name": record["file_name"],
                            "width": record["width"],
                            "height": record["height"],
                        }
                    )
            errors_file.writelines(dumps(entry) + "\n" for entry in left_out)
        header = {"images": images, "categories": vocabulary.categories}
        if self.odvg_path is None:
            count = write_coco(self.output, header, self._annotations(shards, None, vocabulary))
        else:
            labelmap = {str(i): name for i, name in enumerate(vocabulary.class_names)}
            with atomic_write(self.odvg_path.with_name("labelmap.json")) as f:
                f.write(json.dumps(labelmap, indent=1, ensure_ascii=False) + "\n")
            with atomic_write(self.odvg_path) as odvg:
                count = write_coco(self.output, header, self._annotations(shards, odvg, vocabulary))
        print(
            f"Grounding DINO labelled {len(images)} images with {count} boxes; wrote {self.output}"
            + (f"; {zero_area} zero-area boxes dropped" if zero_area else "")
            + (f"; {len(errors)} images skipped, listed in {self.errors_path}" if errors else "")
            + (f"; {len(left_out)} other files left out (not images), listed in {self.errors_path}" if left_out else "")
        )
        return {
            "images": len(images),
            "boxes": count,
            "images_this_run": this_run["images"],
            "boxes_this_run": this_run["boxes"],
            "zero_area_boxes_dropped": zero_area,
            "skipped": [{"file_name": e["file_name"], "reason": e["error"]} for e in errors],
            "left_out": [{"file_name": e["file_name"], "reason": e["error"]} for e in left_out],
            "output": str(self.output),
        }

    def _annotations(self, shards: MergedShards, odvg, vocabulary) -> Iterator[dict]:
        """COCO annotations in merge order with ids 1..N; ODVG lines written along the way."""
        label_of = {cid: i for i, cid in enumerate(vocabulary.category_ids)}
        ann_id = 0
        for record in shards:
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


def drop_zero_area(record: dict) -> dict:
    """`record` without the boxes of zero width or height (as written, after clamping to the image and
    rounding), with their number in `zero_area_boxes`: such a box frames nothing and is no label."""
    detections = record.get("detections", [])
    kept = [d for d in detections if d["bbox"][2] > 0 and d["bbox"][3] > 0]
    if len(kept) == len(detections):
        return record
    return {**record, "detections": kept, "zero_area_boxes": len(detections) - len(kept)}


def not_an_image(file_name: str) -> str:
    """Why a file of the image folders was not labelled."""
    extension = Path(file_name).suffix
    what = f"extension {extension!r} is not" if extension else "a name without an extension is not"
    return f"left out: {what} that of an image format Pillow decodes"


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
                {"bbox": xyxy(d["bbox"]), "label": label_of[d["category_id"]], "category": d["class"]} for d in dets
            ]
        }
    return line
