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


@pytest.mark.parametrize("change", [("--model.multimask", "single"), ("--data.max_pixels", "1000000000")])
@needs_coco128
def test_shards_of_a_run_with_other_settings_are_refused(change, tmp_path_factory, tmp_path):
    boxes = coco128_boxes(tmp_path / "boxes.json", num_images=2)
    out, model = tmp_path / "masks.json", model_dir(tmp_path_factory, "sam")
    cli = cli_main(predict_args(model, boxes, out))
    writer = writer_of(cli)
    writer.store.write_manifest(writer.fingerprint(cli.trainer, cli.model))  # as a killed run leaves it
    with pytest.raises(ValueError, match="holds partial results of a run with different"):
        cli_main(predict_args(model, boxes, out, *change))
    cli_main(predict_args(model, boxes, out))  # the same settings: accepted
    cli_main(predict_args(model, boxes, out, *change, "--writer.fresh", "true"))
