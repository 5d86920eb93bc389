"""`sam predict` killed with SIGKILL mid-way and started again ends with exactly the uninterrupted output; one
process and two (DDP over gloo on the CPU) write the same file."""

import json

import pytest
from auto_label_helpers import big_boxes_file
from sam_helpers import (
    coco128_boxes,
    kill_when_shards_have,
    model_dir,
    needs_coco128,
    predict_args,
    run_sam,
    sam_command,
)

from labelkit.coco import load_coco
from sam.__main__ import cli_main
from sam.writer import SamMaskWriter

TWO_PROCESSES = ("--trainer.devices", "2", "--trainer.strategy", "ddp")


def writer_of(cli) -> SamMaskWriter:
    return next(c for c in cli.trainer.callbacks if isinstance(c, SamMaskWriter))


def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path_factory, tmp_path):
    ann_path, image_dir = big_boxes_file(tmp_path)  # 16 images of 1200 x 1600 with 30 boxes each
    model = model_dir(tmp_path_factory, "sam")

    def args(name: str) -> list[str]:
        return predict_args(
            model, ann_path, tmp_path / name / "masks.json", "--data.batch_size", "1", image_dir=image_dir
        )

    cli_main(args("reference"))
    shards = tmp_path / "killed" / ".masks.json.shards"
    done = kill_when_shards_have(sam_command(*args("killed")), shards, 2)
    assert 2 <= done < 16 and not (tmp_path / "killed" / "masks.json").exists()
    with (shards / "rank00000.jsonl").open("a") as f:
        f.write('{"image_pos": 15, "labels": [{"ind')  # what a kill in the middle of a write leaves

    summary = writer_of(cli_main(args("killed"))).summary  # the same command again
    assert summary["resumed_items"] == done and summary["images_this_run"] == 16 - done
    assert (tmp_path / "killed" / "masks.json").read_bytes() == (tmp_path / "reference" / "masks.json").read_bytes()
    assert not shards.exists()


@needs_coco128
def test_two_processes_write_what_one_writes(tmp_path_factory, tmp_path):
    boxes = coco128_boxes(tmp_path / "boxes.json", num_images=5)
    model = model_dir(tmp_path_factory, "sam2")
    cli_main(predict_args(model, boxes, tmp_path / "one.json", "--data.batch_size", "1"))
    run_sam(*predict_args(model, boxes, tmp_path / "two.json", "--data.batch_size", "1", *TWO_PROCESSES))
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()


@needs_coco128
def test_a_rank_with_nothing_to_do_does_not_hang(tmp_path_factory, tmp_path):
    boxes = coco128_boxes(tmp_path / "boxes.json", num_images=1, odd_boxes=False)
    run_sam(*predict_args(model_dir(tmp_path_factory, "sam"), boxes, tmp_path / "masks.json", *TWO_PROCESSES))
    written = json.loads((tmp_path / "masks.json").read_text())["annotations"]
    assert sorted(a["id"] for a in written) == sorted(a["id"] for a in json.loads(boxes.read_text())["annotations"])


def first_image_record(boxes, labels_path) -> dict:
    """The shard line of the input's first image, as the writer writes it, taken from a finished run's output."""
    coco = load_coco(boxes, check_image_files=False)
    written = {a["id"]: a for a in json.loads(labels_path.read_text())["annotations"]}
    indices = coco.annotation_indices_by_image[coco.images[0]["id"]]
    labels = [
        {"index": i, "annotation": written[coco.annotations[i]["id"]]}
        for i in indices
        if not coco.annotations[i].get("iscrowd", 0)
    ]
    return {"image_pos": 0, "labels": labels}


@pytest.mark.parametrize("change", [("--model.multimask", "single"), ("--data.max_pixels", "1000000000")])
@needs_coco128
def test_shards_of_a_run_with_other_settings_are_refused(change, tmp_path_factory, tmp_path):
    boxes = coco128_boxes(tmp_path / "boxes.json", num_images=2)
    out, model = tmp_path / "masks.json", model_dir(tmp_path_factory, "sam")
    cli = cli_main(predict_args(model, boxes, out))
    reference = out.read_bytes()
    writer = writer_of(cli)
    # what a run killed after its first image leaves: the manifest and that image's line
    writer.store.write_manifest({**writer.fingerprint(cli.trainer, cli.model), "device": "cpu"})
    writer.store.open(0)
    writer.store.write([first_image_record(boxes, out)])
    writer.store.close()
    with pytest.raises(ValueError, match="holds partial results of a run with different"):
        cli_main(predict_args(model, boxes, out, *change))
    summary = writer_of(cli_main(predict_args(model, boxes, out))).summary  # the same settings: resumed
    assert summary["resumed_items"] == 1 and out.read_bytes() == reference
    cli_main(predict_args(model, boxes, out, *change, "--writer.fresh", "true"))
