"""Fit a tiny MAL for a few steps on synthetic data, predict every box, check the file against COCO."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import CROWD_ANNOTATION, run_module
from conftest import TINY_MAL_ARGS

from labelkit.coco import CocoFormatError
from labelkit.masks import segmentation_to_mask
from mal.__main__ import cli_main
from mal.evaluate import evaluate_files
from mal.writer import MaskLabelWriter


def data_args(synthetic) -> list[str]:
    return [
        "--data.train_ann_path",
        str(synthetic["train"]),
        "--data.train_img_dir",
        str(synthetic["images"]),
        "--data.val_ann_path",
        str(synthetic["val"]),
        "--data.val_img_dir",
        str(synthetic["images"]),
    ]


def logger_args(root: Path) -> list[str]:
    return [
        f'--trainer.logger=[{{"class_path": "lightning.pytorch.loggers.CSVLogger", '
        f'"init_args": {{"save_dir": "{root}"}}}}]',
        f"--trainer.default_root_dir={root}",
    ]


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cli = cli_main(["fit", *TINY_MAL_ARGS, *data_args(synthetic), *logger_args(root), "--trainer.max_epochs", "1"])
    return {
        "root": root,
        "last": cli.trainer.checkpoint_callback.last_model_path or str(next(root.rglob("*.ckpt"))),
        "steps": cli.trainer.global_step,
    }


def predict_input(synthetic, tmp_path) -> Path:
    """The validation file plus a crowd region, a zero-width box and a 1-pixel box."""
    data = json.loads(synthetic["val"].read_text())
    anns = data["annotations"]
    next_id = max(a["id"] for a in anns) + 1
    anns.append({**CROWD_ANNOTATION, "id": next_id})
    anns.append({"id": next_id + 1, "image_id": 2, "category_id": 2, "bbox": [40, 30, 0, 12], "iscrowd": 0})
    anns.append({"id": next_id + 2, "image_id": 3, "category_id": 3, "bbox": [10.2, 10.7, 1, 1], "score": 0.25})
    for ann in anns[:-3]:
        del ann["segmentation"]  # boxes only, as a user would give them
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    return path


def predict(trained, ann_path, image_dir, out_path, *extra: str) -> None:
    cli_main(
        [
            "predict",
            *TINY_MAL_ARGS,
            *logger_args(trained["root"]),
            *("--ckpt_path", trained["last"], "--data.predict_ann_path", str(ann_path)),
            *("--data.predict_img_dir", str(image_dir), "--writer.label_dump_path", str(out_path)),
            *extra,
        ]
    )


def test_fit_writes_checkpoints_metrics_and_overlays(trained):
    assert trained["steps"] > 0 and Path(trained["last"]).is_file()
    metrics = next(trained["root"].rglob("metrics.csv")).read_text()
    assert "train/loss" in metrics and "val/mIoU" in metrics and "val/mask_AP" in metrics
    assert "train/loss_mil" in metrics and "train/loss_crf" in metrics
    assert list(trained["root"].rglob("val_overlays_step*.png"))


def test_predict_writes_one_mask_per_box_following_the_coco_spec(trained, synthetic, tmp_path):
    ann_path = predict_input(synthetic, tmp_path)
    out = tmp_path / "labels.json"
    predict(trained, ann_path, synthetic["images"], out)
    source, result = json.loads(ann_path.read_text()), json.loads(out.read_text())
    assert result["images"] == source["images"] and result["categories"] == source["categories"]
    by_id = {a["id"]: a for a in result["annotations"]}
    assert sorted(by_id) == sorted(a["id"] for a in source["annotations"])  # every box exactly once
    assert len(by_id) == len(result["annotations"])
    sizes = {im["id"]: (im["height"], im["width"]) for im in source["images"]}
    for ann in source["annotations"]:
        out_ann = by_id[ann["id"]]
        for key in ("image_id", "category_id", "bbox", "iscrowd", "score"):
            assert out_ann.get(key) == ann.get(key)
        if ann.get("iscrowd"):
            assert out_ann == ann  # passed through untouched
            continue
        rle = out_ann["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(sizes[ann["image_id"]])
        mask = segmentation_to_mask(rle, *sizes[ann["image_id"]])
        assert out_ann["area"] == int(mask.sum())
        assert 0 <= out_ann["mal_score"] <= 1
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        if len(xs):  # masks stay inside the box rounded outwards, within the original paste-back's 1-pixel rim
            assert xs.min() >= np.floor(x) - 1 and xs.max() < np.ceil(x + w) + 1
            assert ys.min() >= np.floor(y) - 1 and ys.max() < np.ceil(y + h) + 1
    degenerate = by_id[max(by_id) - 1]
    assert degenerate["mal_flag"] == "degenerate_box" and degenerate["area"] >= 1
    assert "mal_flag" not in by_id[max(by_id)]  # a 1-pixel box goes through the model

    again = tmp_path / "again.json"
    predict(trained, ann_path, synthetic["images"], again)
    assert again.read_bytes() == out.read_bytes()  # same input -> byte-identical output


def test_evaluate_and_validate(trained, synthetic, tmp_path):
    out = tmp_path / "labels.json"
    predict(trained, synthetic["val"], synthetic["images"], out)
    metrics = evaluate_files(str(out), str(synthetic["val"]))
    n = sum(1 for _ in json.loads(synthetic["val"].read_text())["annotations"])
    assert metrics["num_instances"] == n and metrics["missing_predictions"] == 0
    assert 0 < metrics["mIoU"] <= 1 and 0 <= metrics["mask_AP"] <= 1
    cli = cli_main(
        [
            "validate",
            *TINY_MAL_ARGS,
            *data_args(synthetic),
            *logger_args(trained["root"]),
            "--ckpt_path",
            trained["last"],
        ]
    )
    # validation (in-loop crops) and predict + evaluate (files) agree on mIoU
    assert cli.trainer.callback_metrics["val/mIoU"].item() == pytest.approx(metrics["mIoU"], abs=1e-4)


def test_bad_image_is_skipped_and_reported(trained, synthetic, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in synthetic["images"].glob("val_*.jpg"):
        (images / p.name).write_bytes(p.read_bytes())
    (images / "val_00002.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "labels.json"
    predict(trained, synthetic["val"], images, out)
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [e["image_id"] for e in errors] == [2] and "val_00002.jpg" in errors[0]["reason"]
    source = json.loads(synthetic["val"].read_text())["annotations"]
    written = {a["id"] for a in json.loads(out.read_text())["annotations"]}
    expected_missing = {a["id"] for a in source if a["image_id"] == 2}
    assert set(errors[0]["annotation_ids"]) == expected_missing
    assert written == {a["id"] for a in source} - expected_missing  # every box accounted for


def test_resume_continues_from_the_checkpoint(trained, synthetic):
    cli = cli_main(
        [
            "fit",
            *TINY_MAL_ARGS,
            *data_args(synthetic),
            *logger_args(trained["root"]),
            "--trainer.max_epochs",
            "2",
            "--ckpt_path",
            trained["last"],
        ]
    )
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 2 * trained["steps"]


def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": "x", "name": "a"}]}))
    result = run_module(
        "mal",
        "predict",
        *TINY_MAL_ARGS,
        "--data.predict_ann_path",
        str(bad),
        "--writer.label_dump_path",
        str(tmp_path / "out.json"),
    )
    assert result.returncode == 2
    assert "categories[0] (id 'x'): field 'id': must be an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_annotations_stop_fit_before_any_model_work(tmp_path):
    """The annotation file is checked before the network is built and its weights are read."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1}]}))
    missing_weights = tmp_path / "absent.pth"
    with pytest.raises(CocoFormatError, match=r"categories\[0\] \(id 1\): field 'name'"):
        cli_main(
            [
                "fit",
                *TINY_MAL_ARGS,
                "--data.train_ann_path",
                str(bad),
                "--data.train_img_dir",
                str(tmp_path),
                "--model.pretrained_path",
                str(missing_weights),
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )


def test_prediction_options_on_the_command_line_beat_the_checkpoint(trained, synthetic, tmp_path):
    areas = {}
    for threshold in ("0.0", "1.0"):
        out = tmp_path / f"labels_{threshold}.json"
        predict(trained, synthetic["val"], synthetic["images"], out, "--model.mask_thres", threshold)
        areas[threshold] = [a["area"] for a in json.loads(out.read_text())["annotations"]]
    sides = [
        (np.ceil(x + w) - np.floor(x), np.ceil(y + h) - np.floor(y))
        for x, y, w, h in (a["bbox"] for a in json.loads(synthetic["val"].read_text())["annotations"])
    ]
    # every probability is above 0: the whole box, and at most the 1-pixel rim the paste-back's resize adds
    assert all(w * h <= area <= (w + 2) * (h + 2) for (w, h), area in zip(sides, areas["0.0"], strict=True))
    assert set(areas["1.0"]) == {0}  # none is above 1: empty masks


def test_writer_thread_errors_reach_the_main_loop(trained, synthetic, tmp_path, monkeypatch):
    """Records are made in a writer thread; its error stops the run, and the batches before stay on disk."""
    threads = []
    records = MaskLabelWriter.records

    def records_failing_at_the_second_batch(self, trainer, prediction, batch):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            raise OSError("disk gone")
        return records(self, trainer, prediction, batch)

    monkeypatch.setattr(MaskLabelWriter, "records", records_failing_at_the_second_batch)
    out = tmp_path / "labels.json"
    with pytest.raises(OSError, match="disk gone"):
        predict(
            trained,
            synthetic["val"],
            synthetic["images"],
            out,
            "--data.eval_batch_size=1",
            "--writer.write_in_thread=true",
        )
    assert len(threads) == 2 and all(name.startswith("shard-writer") for name in threads)
    shards = tmp_path / ".labels.json.shards"
    assert sum(p.read_text().count("\n") for p in shards.glob("rank*.jsonl")) == 1  # the first batch is kept
    assert not out.exists()


def test_a_flag_from_an_earlier_run_is_not_carried_over():
    from mal.writer import labelled_annotations

    class Coco:
        annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4], "mal_flag": "clipped_box"}]

    result = {"x0": 2, "y0": 2, "mask": np.ones((4, 4), bool), "score": 0.9, "degenerate": False}
    (record,) = labelled_annotations(Coco(), [0], (10, 10), [result])
    assert "mal_flag" not in record["annotation"] and record["annotation"]["area"] == 16


def test_a_convolutional_backbone_with_the_scratch_losses_trains_and_predicts(synthetic, tmp_path):
    """A timm convnet cut at stride 8, trained with the pairwise loss, predicts with test-time refinement
    through `--ckpt_path` even where the configuration names a ViT: the checkpoint knows its network."""
    conv = ["--model.arch=resnet10t", "--model.feature_stride=8", "--model.backbone_kwargs={}"]
    scratch = ["--model.loss_pairwise_weight=1.0", "--model.loss_pairwise_step=2", "--model.test_crf_num_iter=3"]
    fit_args = [*TINY_MAL_ARGS, *conv, *scratch, *data_args(synthetic), *logger_args(tmp_path)]
    fit = cli_main(["fit", *fit_args, "--trainer.max_epochs=2"])
    assert fit.model.student.logit_size == 4 * 32 // 8
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train/loss_pairwise" in metrics
    out = tmp_path / "labels.json"
    checkpoint = {"root": tmp_path, "last": str(next(tmp_path.rglob("*.ckpt")))}
    refine = ["--model.test_crf_num_iter=3", "--model.test_crf_colour_weight=1.0", "--model.test_crf_unary_max"]
    predict(checkpoint, synthetic["val"], synthetic["images"], out, *refine, "[0.95, 0.75, 0.75]")
    labels = json.loads(out.read_text())["annotations"]
    assert len(labels) == len(json.loads(synthetic["val"].read_text())["annotations"])
    assert all(0 <= a["mal_score"] <= 1 and a["segmentation"]["counts"] for a in labels)


def test_a_self_training_round_learns_from_the_first_rounds_labels(trained, synthetic, tmp_path):
    """Round 1's labels of the training boxes (with their mal_score) and its checkpoint start round 2, which
    adds the mask loss on the masks scored high enough."""
    round_one = tmp_path / "round1_labels.json"
    predict(trained, synthetic["train"], synthetic["images"], round_one)
    scores = [a["mal_score"] for a in json.loads(round_one.read_text())["annotations"]]
    threshold = float(np.median(scores))
    root = tmp_path / "round2"
    round_two = [
        *("--data.train_ann_path", str(round_one), "--data.train_img_dir", str(synthetic["images"])),
        *("--data.val_ann_path", str(synthetic["val"]), "--data.val_img_dir", str(synthetic["images"])),
        f"--data.train_mask_min_score={threshold}",
        "--model.loss_mask_weight=1.0",
        "--model.loss_crf_weight=0.0",  # as the recipe's rounds: no teacher pass, no CRF
        f"--model.pretrained_path={trained['last']}",
    ]
    cli_main(["fit", *TINY_MAL_ARGS, *round_two, *logger_args(root), "--trainer.max_epochs=1"])
    metrics = next(root.rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("train/loss_mask")
    values = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert values and all(0 <= v <= 1 for v in values) and max(values) > 0
    assert "train/loss_mil" in header and "train/loss_crf" not in header


def test_a_mask_loss_without_masks_to_learn_from_is_refused(synthetic, tmp_path):
    args = [*TINY_MAL_ARGS, *data_args(synthetic), *logger_args(tmp_path), "--model.loss_mask_weight=1.0"]
    with pytest.raises(ValueError, match="needs data.train_mask_min_score"):
        cli_main(["fit", *args, "--trainer.max_epochs=1"])


def test_selftrain_fits_two_rounds_and_labels_every_box(synthetic, tmp_path):
    """`python -m mal selftrain` for real on the tiny model: fit, label, fit, label, fit, label."""
    out = tmp_path / "selftrain"
    argv = ["selftrain", "--ann", str(synthetic["train"]), "--images", str(synthetic["images"]), "--out", str(out)]
    cli_main([*argv, *TINY_MAL_ARGS, "trainer.max_epochs=1", "--model.test_crf_num_iter", "2"])
    summary = json.loads((out / "self_training.json").read_text())
    assert len(summary["rounds"]) == 3 and all(r["steps"] > 0 for r in summary["rounds"])
    boxes = json.loads(synthetic["train"].read_text())["annotations"]
    for name in ("round1_labels.json", "round2_labels.json", "labels.json"):
        labels = json.loads((out / name).read_text())["annotations"]
        assert [a["id"] for a in labels] == [a["id"] for a in boxes]
        assert all(a["segmentation"]["counts"] and 0 <= a["mal_score"] <= 1 for a in labels)
    round_logs = sorted(out.glob("fit/version_*/metrics.csv"))
    assert len(round_logs) == 3
    assert "train/loss_crf" in round_logs[0].read_text().splitlines()[0]
    for log in round_logs[1:]:  # the rounds: the masks' loss, no CRF
        header = log.read_text().splitlines()[0]
        assert "train/loss_mask" in header and "train/loss_crf" not in header


def test_grabcut_after_the_refinement_cuts_the_labels_and_keeps_them_in_their_boxes(trained, synthetic, tmp_path):
    """`test_grabcut_num_iter` through predict: GrabCut decides the masks, each stays inside its box (give or
    take the pasting's one-pixel fringe), every box keeps its label and score; the masks differ from the
    refinement's own."""
    refine = ["--model.test_crf_num_iter=3", "--model.test_crf_colour_weight=1.0"]
    plain, cut = tmp_path / "refined.json", tmp_path / "grabcut.json"
    predict(trained, synthetic["val"], synthetic["images"], plain, *refine)
    predict(trained, synthetic["val"], synthetic["images"], cut, *refine, "--model.test_grabcut_num_iter=2")
    refined, cut = (json.loads(path.read_text())["annotations"] for path in (plain, cut))
    assert [a["id"] for a in cut] == [a["id"] for a in refined]
    assert all(0 <= a["mal_score"] <= 1 for a in cut)
    changed = 0
    for before, after in zip(refined, cut):
        mask = segmentation_to_mask(after["segmentation"], *after["segmentation"]["size"]).astype(bool)
        x, y, w, h = after["bbox"]
        inside = np.zeros_like(mask)  # the box and the one-pixel fringe of pasting a crop back (bilinear)
        inside[max(int(y) - 1, 0) : int(np.ceil(y + h)) + 1, max(int(x) - 1, 0) : int(np.ceil(x + w)) + 1] = True
        assert not (mask & ~inside).any()
        changed += int((mask != segmentation_to_mask(before["segmentation"], *mask.shape).astype(bool)).any())
    assert changed > 0
