"""Multi-pass labeling on the real tiny-model path, and end-to-end runs of the `label` command."""

import json
import os
import subprocess
import sys

import pytest
import torch
from gdino_helpers import SMALL_SIZE, needs_vocab

from gdino.__main__ import main
from gdino.data import GroundingDinoDataModule, SizeGroupedBatchSampler
from gdino.module import GroundingDinoLabeler
from labelkit.coco import load_coco
from labelkit.synthetic import make_synthetic_coco

pytestmark = needs_vocab
CLASSES = ["star", "ring", "traffic light"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    gt = make_synthetic_coco(root, num_images=3, height=96, width=128, seed=1)
    return root, gt


def _label(gdino_model_dir, dataset, **model_kwargs) -> list[dict]:
    data = GroundingDinoDataModule(image_dir=str(dataset[0] / "images"), class_names=CLASSES, batch_size=2)
    labeler = GroundingDinoLabeler(str(gdino_model_dir), image_size=SMALL_SIZE, aggregation="none", **model_kwargs)
    labeler.set_vocabulary(data.vocabulary)
    with torch.inference_mode():
        return [record for batch in data.predict_dataloader() for record in labeler.predict_step(batch)]


def test_images_without_detections_in_pass_0_are_queried_again(gdino_model_dir, dataset):
    # nothing can beat 1.0 in pass 0, so every image ends pass 0 empty-handed
    records = _label(gdino_model_dir, dataset, iteration_scheduler=[{"conf_threshold": 1.0}, {"conf_threshold": 0.0}])
    assert len(records) == 3
    for record in records:
        assert record["passes"] == [{"pass": 0, "queried": [1, 2, 3]}, {"pass": 1, "queried": [1, 2, 3]}]
        assert record["detections"]
        assert {d["pass"] for d in record["detections"]} == {1}
        assert {d["threshold"] for d in record["detections"]} == {0.0}


def test_classes_found_in_pass_0_are_not_queried_again(gdino_model_dir, dataset):
    records = _label(
        gdino_model_dir,
        dataset,
        iteration_scheduler=[{"conf_threshold": 1.0}, {"conf_threshold": 0.0}],
        class_thresholds={"Star": 0.0},
    )
    for record in records:
        assert record["passes"] == [{"pass": 0, "queried": [1, 2, 3]}, {"pass": 1, "queried": [2, 3]}]
        by_class = {}
        for d in record["detections"]:
            by_class.setdefault(d["class"], set()).add((d["pass"], d["threshold"]))
        assert by_class == {"star": {(0, 0.0)}, "ring": {(1, 0.0)}, "traffic light": {(1, 0.0)}}


def test_labeling_stops_when_nothing_is_left_to_query(gdino_model_dir, dataset):
    records = _label(gdino_model_dir, dataset, schedule={"type": "step", "start": 0.0, "end": 0.0, "num_passes": 3})
    assert all(r["passes"] == [{"pass": 0, "queried": [1, 2, 3]}] for r in records)


def test_bf16_labeling_gives_boxes_inside_the_image(gdino_model_dir, dataset):
    records = _label(gdino_model_dir, dataset, precision="bf16", iteration_scheduler=[{"conf_threshold": 0.0}])
    for record in records:
        assert record["detections"]
        for d in record["detections"]:
            x, y, w, h = d["bbox"]
            assert 0 <= x <= x + w <= 128 and 0 <= y <= y + h <= 96 and 0 <= d["score"] <= 1


def test_batches_hold_one_image_size_and_ranks_split_them():
    sizes = [(96, 128), (100, 100), (96, 128), (96, 128), None, (100, 100)]
    assert list(SizeGroupedBatchSampler(sizes, 2)) == [[0, 2], [1, 5], [3], [4]]
    assert list(SizeGroupedBatchSampler(sizes, 2, rank=1, world_size=2)) == [[1, 5], [4]]


def label_args(gdino_model_dir, *extra: str) -> list[str]:
    """`gdino label` with the tiny model at the small test size, decoding in the main process, no progress bar."""
    return [
        "label",
        "--config",
        "configs/gdino/tiny.yaml",
        "--model.path",
        str(gdino_model_dir),
        "--model.image_size",
        json.dumps(SMALL_SIZE),
        "--data.num_workers",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _write_image_tree(root, dataset):
    """A nested folder with an upper-case extension, a duplicate base name and an undecodable file."""
    images = root / "photos"
    (images / "sub").mkdir(parents=True)
    sources = sorted((dataset[0] / "images").glob("*.jpg"))
    (images / "a.jpg").write_bytes(sources[0].read_bytes())
    (images / "sub" / "a.JPG").write_bytes(sources[1].read_bytes())
    (images / "sub" / "broken.png").write_bytes(b"not an image")
    return images


def test_label_command_writes_a_valid_deterministic_coco_file(gdino_model_dir, dataset, tmp_path, capsys):
    images = _write_image_tree(tmp_path, dataset)
    args = label_args(
        gdino_model_dir,
        "--data.image_dir",
        str(images),
        "--data.class_names",
        '[star, ring, "traffic light"]',
        "--model.iteration_scheduler",
        "[{conf_threshold: 0.9}, {conf_threshold: 0.3, nms_threshold: 0.5}]",
        "--model.max_dets_per_image",
        "20",
    )
    out = tmp_path / "labels.json"
    assert (
        main(
            [
                *args,
                "--output",
                str(out),
                "--writer.odvg_path",
                str(tmp_path / "odvg" / "train.jsonl"),
                "--writer.visualize_dir",
                str(tmp_path / "vis"),
            ]
        )
        == 0
    )

    coco = load_coco(out, images)  # validates structure, ids and references
    assert [im["file_name"] for im in coco.images] == ["a.jpg", "sub/a.JPG"]
    assert all((im["width"], im["height"]) == (128, 96) for im in coco.images)
    assert [c["name"] for c in coco.categories] == CLASSES
    assert coco.annotations and len(coco.annotations) <= 40
    for i, ann in enumerate(coco.annotations, start=1):
        x, y, w, h = ann["bbox"]
        assert ann["id"] == i and ann["iscrowd"] == 0 and ann["area"] == pytest.approx(w * h, abs=0.01)
        assert 0 <= x <= x + w <= 128.01 and 0 <= y <= y + h <= 96.01
        assert ann["pass"] in (0, 1) and ann["threshold"] == (0.9, 0.3)[ann["pass"]]
        assert ann["score"] >= ann["threshold"]  # > before rounding to 4 decimals
    errors = [json.loads(line) for line in (tmp_path / "labels.errors.jsonl").read_text().splitlines()]
    assert [e["file_name"] for e in errors] == ["sub/broken.png"]
    assert "not a recognised image" in errors[0]["error"]

    odvg = [json.loads(line) for line in (tmp_path / "odvg" / "train.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in odvg] == ["a.jpg", "sub/a.JPG"]
    assert sum(len(line["detection"]["instances"]) for line in odvg) == len(coco.annotations)
    assert json.loads((tmp_path / "odvg" / "labelmap.json").read_text()) == {
        "0": "star",
        "1": "ring",
        "2": "traffic light",
    }
    assert (tmp_path / "vis" / "sub" / "a.JPG.jpg").is_file()  # the whole file name: no overlay overwrites another
    assert not list(tmp_path.glob(".labels.json.shards"))

    again = tmp_path / "again.json"
    assert main([*args, "--output", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_label_keeps_coco_ids_and_images_without_detections(gdino_model_dir, dataset, tmp_path):
    root, gt = dataset
    data = json.loads(gt.read_text())
    for image in data["images"]:
        image["id"] += 100  # ids the output must keep
    data["annotations"] = []
    data["categories"] = [{**c, "id": c["id"] * 10} for c in data["categories"]]
    ann_path = root / "to_label.json"
    ann_path.write_text(json.dumps(data))
    out = tmp_path / "labels.json"
    assert (
        main(
            label_args(
                gdino_model_dir,
                "--data.ann_path",
                str(ann_path),
                "--data.image_dir",
                str(root / "images"),
                "--data.class_names",
                "[Star, ring]",
                "--model.iteration_scheduler",
                "[{conf_threshold: 1.0}]",
                "--model.class_thresholds",
                "{star: 0.0}",
                "--output",
                str(out),
            )
        )
        == 0
    )
    labels = load_coco(out, root / "images")
    assert [im["id"] for im in labels.images] == [101, 102, 103]
    assert labels.categories == data["categories"]
    assert labels.annotations and {a["category_id"] for a in labels.annotations} == {40}  # star = shape 4


def test_noun_chunk_mode_keeps_images_with_no_detection(gdino_model_dir, dataset, tmp_path):
    root, _ = dataset
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {"file_name": "instances_00001.jpg", "caption": "a red star", "noun_chunks": ["a red star"]},
                {
                    "file_name": "instances_00002.jpg",
                    "caption": "a blue ring",
                    "noun_chunks": ["a blue ring"],
                },
            ]
        )
        + "\n"
    )
    out = tmp_path / "labels.json"
    assert (
        main(
            label_args(
                gdino_model_dir,
                "--data.noun_chunk_path",
                str(chunks),
                "--data.image_dir",
                str(root / "images"),
                "--model.iteration_scheduler",
                "[{conf_threshold: 1.0}]",
                "--model.class_thresholds",
                "{a red star: 0.0}",
                "--writer.odvg_path",
                str(tmp_path / "g.jsonl"),
                "--output",
                str(out),
            )
        )
        == 0
    )
    labels = load_coco(out, root / "images")
    assert [im["file_name"] for im in labels.images] == ["instances_00001.jpg", "instances_00002.jpg"]
    assert {a["image_id"] for a in labels.annotations} == {1}
    odvg = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert odvg[0]["grounding"]["caption"] == "a red star"
    assert {r["phrase"] for r in odvg[0]["grounding"]["regions"]} == {"a red star"}
    assert odvg[1]["grounding"]["regions"] == []


def test_evaluate_command_reports_ap_per_class(gdino_model_dir, dataset, tmp_path, capsys):
    root, gt = dataset
    pred = json.loads(gt.read_text())
    for ann in pred["annotations"]:
        ann["score"] = 0.9
    pred["annotations"][0]["bbox"] = [0.0, 0.0, 1.0, 1.0]  # one miss
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(pred))
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--pred", str(pred_path), "--gt", str(gt), "--output", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0.5 < metrics["AP"] < 1.0
    assert set(metrics["per_class"]) == {c["name"] for c in pred["categories"]}
    assert sorted(v["AP"] for v in metrics["per_class"].values())[-1] == 1.0
    assert "AP50" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data.image_dir", "/nonexistent/photos", "--data.class_names", "[car]"], "/nonexistent/photos"),
        (["--data.image_dir", ".", "--data.class_names", "[car, Car.]"], "duplicates"),
        (
            ["--data.image_dir", ".", "--data.class_names", "[car]", "--data.noun_chunk_path", "x.jsonl"],
            "noun_chunk_path",
        ),
    ],
)
def test_bad_input_gives_one_clear_error(gdino_model_dir, tmp_path, capsys, extra, message):
    code = main(["label", "--model.path", str(gdino_model_dir), "--output", str(tmp_path / "o.json"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "label",
            "--model.path",
            str(tmp_path / "none"),
            "--data.image_dir",
            ".",
            "--data.class_names",
            "[car]",
            "--output",
            str(tmp_path / "o.json"),
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_undecodable_image_alone_gives_an_error_record(gdino_model_dir, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "labels.json"
    assert (
        main(
            [
                "label",
                "--model.path",
                str(gdino_model_dir),
                "--data.image_dir",
                str(images),
                "--data.class_names",
                "[car]",
                "--trainer.enable_progress_bar",
                "false",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["images"] == []
    assert "bad.jpg" in (tmp_path / "labels.errors.jsonl").read_text()


def test_two_ranks_write_the_same_file_as_one(gdino_model_dir, dataset, tmp_path):
    """Real processes through `python -m gdino`: DDP on CPU (gloo) must not change a byte."""
    args = [
        sys.executable,
        "-m",
        "gdino",
        "label",
        "--model.path",
        str(gdino_model_dir),
        "--model.image_size",
        json.dumps(SMALL_SIZE),
        "--data.image_dir",
        str(dataset[0] / "images"),
        "--data.class_names",
        "[star, ring]",
        "--model.iteration_scheduler",
        "[{conf_threshold: 0.5}]",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([*args, "--output", str(one)], check=True, capture_output=True, env=env, timeout=300)
    subprocess.run(
        [*args, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--output", str(two)],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert json.loads(one.read_text())["annotations"]
    assert two.read_bytes() == one.read_bytes()
