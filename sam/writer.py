"""Write SAM's masks as MAL's writer does (mal.writer.MaskLabelWriter): the input COCO file with every box's
segmentation replaced, `area` the mask's area, ids, boxes and scores kept, crowd regions passed through,
streamed to per-rank shards, resumable after a kill, merged exactly once into one file.

The box's own fields are SAM's: `sam_score` (the predicted IoU of its mask) and `sam_flag` (degenerate_box,
clipped_box or outside_image, as `mal_flag`). MaskLabelWriter writes MAL's names; until it takes the
names as settings, this writer renames them (`records`) and recounts the flags for its summary (`merge`).
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter

from mal.writer import FLAG_COUNTS, MaskLabelWriter, box_flag


def as_sam_label(label: dict, source: dict, flag: str | None) -> dict:
    """MAL's label of a box with its score and `flag` under SAM's names, replacing any the input record had;
    its own `mal_score` and `mal_flag` (a file MAL labelled before) are kept as they were."""
    renamed = {k: v for k, v in label.items() if k not in ("mal_score", "mal_flag", "sam_score", "sam_flag")}
    renamed.update({k: source[k] for k in ("mal_score", "mal_flag") if k in source})
    renamed["sam_score"] = label["mal_score"]
    if flag:
        renamed["sam_flag"] = flag
    return renamed


class SamMaskWriter(MaskLabelWriter):
    """Stream SAM's masks to disk as they come; resume after a kill (see MaskLabelWriter).

    Args:
        label_dump_path: the COCO JSON to write. Skipped images are listed in `errors.jsonl` beside it.
        fresh: discard the results of an interrupted earlier run instead of resuming from them.
        write_in_thread: RLE-encode and write each batch in a thread while the next one is predicted; null:
            when the model is on an accelerator.
    """

    def records(self, trainer, prediction, batch) -> list[dict]:
        annotations = trainer.datamodule.predict_coco.annotations
        records = super().records(trainer, prediction, batch)
        for record, image in zip(records, prediction):
            for item, result in zip(record.get("labels", ()), image.get("results", ())):
                source = annotations[item["index"]]
                flag = box_flag(source["bbox"], *image["size"], result["degenerate"])
                item["annotation"] = as_sam_label(item["annotation"], source, flag)
        return records

    def merge(self, trainer) -> dict:
        """MaskLabelWriter's merge, its summary's flag counts taken from `sam_flag`."""
        with contextlib.redirect_stdout(io.StringIO()):  # its message counts `mal_flag`
            summary = super().merge(trainer)
        flags = Counter(
            label["annotation"]["sam_flag"]
            for record in self.store.merged()
            for label in record.get("labels", ())
            if "sam_flag" in label["annotation"]
        )
        summary.update({name: flags[flag] for flag, name in FLAG_COUNTS.items()})
        skipped = summary["skipped"]
        print(
            f"SAM labelled {summary['boxes']} boxes on {summary['images']} images ({summary['degenerate_boxes']} "
            f"degenerate boxes got their box mask, {summary['clipped_boxes']} boxes were clipped to their image, "
            f"{summary['outside_boxes']} boxes outside their image got no mask); wrote "
            f"{summary['annotations_written']} annotations to {self.label_dump_path}"
            + (f"; {len(skipped)} images skipped, listed in {self.errors_path}" if skipped else "")
        )
        return summary
