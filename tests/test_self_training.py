"""Self-training: the training boxes' own masks (a previous run's labels) as extra supervision, and the rounds of
fits and labelling that produce them (`python -m mal selftrain`)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import mal.self_training
from labelkit.coco import load_coco
from mal.__main__ import cli_main
from mal.data import BoxCropDataset
from mal.module import MALModule

BOX = [10, 8, 24, 16]  # x, y, w, h
LEFT_HALF = [[10, 8, 22, 8, 22, 24, 10, 24]]  # polygon over the box's left half


def coco_with_masks(tmp_path):
    """One 40 x 60 image: the box's left half red, the rest grey; three records of that box with a red-half
    mask scored 0.9, the same mask scored 0.2, and no mask."""
    image = np.full((40, 60, 3), 128, np.uint8)
    image[8:24, 10:22] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "a.png")
    base = {"image_id": 1, "category_id": 1, "bbox": BOX, "iscrowd": 0, "area": float(BOX[2] * BOX[3])}
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {**base, "id": 1, "segmentation": LEFT_HALF, "mal_score": 0.9},
            {**base, "id": 2, "segmentation": LEFT_HALF, "mal_score": 0.2},
            {**base, "id": 3},
        ],
    }
    (tmp_path / "labels.json").write_text(json.dumps(data))
    return load_coco(tmp_path / "labels.json", tmp_path)


def test_training_samples_carry_the_masks_scored_high_enough(tmp_path):
    coco = coco_with_masks(tmp_path)
    dataset = BoxCropDataset(coco, [0, 1, 2], 32, (0.0, 0.0), mask_min_score=0.5)
    for seed in range(4):  # both sides of the random mirror flip
        torch.manual_seed(seed)
        samples = [dataset[i] for i in range(3)]
        assert [float(s["mask_valid"]) for s in samples] == [1.0, 0.0, 0.0]
        mask, red = samples[0]["mask"][0], samples[0]["image"][0] > 200
        assert (mask == red.float()).float().mean() > 0.95  # the mask follows the image through crop and flip
        assert 0.4 < float(mask.mean()) < 0.6 and (mask <= samples[0]["box_mask"][0]).all()
        assert not samples[1]["mask"].any() and not samples[2]["mask"].any()


def test_boxes_only_training_samples_have_no_mask_fields(tmp_path):
    sample = BoxCropDataset(coco_with_masks(tmp_path), [0], 32, (0.0, 0.0))[0]
    assert "mask" not in sample and "mask_valid" not in sample


def test_mask_loss_counts_only_the_boxes_with_a_mask():
    model = MALModule(
        "vit_tiny_patch16_224",
        backbone_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        mask_head_hidden_channel=8,
        mask_head_out_channel=8,
        crop_size=32,
        loss_size=16,
    )
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, :, :16] = 1
    student = torch.zeros(2, 1, 16, 16)
    student[0, :, :, :8] = 1  # right for the first box, empty (all wrong) for the second
    batch = {"mask": masks, "mask_valid": torch.tensor([1.0, 0.0])}
    assert float(model.mask_term(student, batch, 16)) < 1e-4
    batch["mask_valid"] = torch.tensor([1.0, 1.0])
    assert float(model.mask_term(student, batch, 16)) > 0.4


def fake_cli(calls: list, last_call: int):
    """Stands in for `mal.__main__.cli_main`: records each command line; a fit returns a trainer whose last
    checkpoint is named after the call; the `last_call`-th call stops the run."""

    def cli(argv):
        calls.append(argv)
        if len(calls) == last_call:
            raise SystemExit(0)
        trainer = SimpleNamespace(
            checkpoint_callback=SimpleNamespace(last_model_path=f"call{len(calls)}.ckpt"),
            current_epoch=4,
            global_step=200,
            max_epochs=4,
            precision="bf16-mixed",
            precision_reason="test",
        )
        return SimpleNamespace(trainer=trainer)

    return cli


def test_self_train_fits_labels_and_fits_again_from_the_last_model(monkeypatch, tmp_path):
    """fit -> label the training boxes -> fit from that checkpoint on those labels -> ... -> label."""
    calls = []
    monkeypatch.setattr(mal.self_training, "cli_main", fake_cli(calls, last_call=6))
    argv = ["--ann", "boxes.json", "--images", "imgs", "--out", str(tmp_path), "--self_training", "a.yaml"]
    with pytest.raises(SystemExit):
        mal.self_training.main([*argv, "--self_training", "b.yaml", "model.lr=1e-5"])
    assert [argv[0] for argv in calls] == ["fit", "predict", "fit", "predict", "fit", "predict"]
    assert "--ckpt_path=call1.ckpt" in calls[1] and "--ckpt_path=call3.ckpt" in calls[3]
    assert f"--writer.label_dump_path={tmp_path / 'round2_labels.json'}" in calls[3]
    assert all("--data.predict_ann_path=boxes.json" in argv for argv in calls[1::2])
    assert "--config=a.yaml" in calls[2] and "--config=b.yaml" in calls[4]
    assert "--config=a.yaml" in calls[1] and "--config=b.yaml" in calls[3]  # each round's targets: its config
    assert not any(arg in calls[5] for arg in ("--config=a.yaml", "--config=b.yaml"))  # the labels: the recipe's
    assert f"--data.train_ann_path={tmp_path / 'round1_labels.json'}" in calls[2]
    assert f"--data.train_ann_path={tmp_path / 'round2_labels.json'}" in calls[4]
    assert "--model.pretrained_path=call3.ckpt" in calls[4] and "--ckpt_path=call5.ckpt" in calls[5]
    assert f"--writer.label_dump_path={tmp_path / 'labels.json'}" in calls[5]
    assert all("--model.lr=1e-5" in argv for argv in calls)
    assert all(any(arg.endswith("scratch_cpu.yaml") for arg in argv) for argv in calls)  # the default recipe
    assert all(arg.startswith("--trainer.max_time=00:00:") for arg in (calls[0][-2], calls[2][-2]))


def test_self_train_without_rounds_fits_once_and_labels(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(mal.self_training, "cli_main", fake_cli(calls, last_call=99))
    argv = ["--ann", "boxes.json", "--images", "imgs", "--out", str(tmp_path), "--self_training", "none"]
    mal.self_training.main(argv)
    assert [argv[0] for argv in calls] == ["fit", "predict"]
    result = json.loads((tmp_path / "self_training.json").read_text())
    assert result["checkpoint"] == "call1.ckpt" and result["rounds"] == [
        {"steps": 200, "epochs": 4, "stopped_by": "max_epochs 4"}
    ]
    assert result["labels"] == str(tmp_path / "labels.json")


def test_selftrain_is_a_command_of_python_m_mal(monkeypatch):
    seen = {}
    monkeypatch.setattr(mal.self_training, "main", lambda argv: seen.setdefault("argv", argv))
    assert cli_main(["selftrain", "--ann", "a.json"]) is None and seen["argv"] == ["--ann", "a.json"]


def test_settings_keep_their_order_in_every_spelling():
    parser = mal.self_training.argument_parser("test", "out")
    argv = ["--model.arch", "vit", "trainer.max_epochs=3", "--data.crop_size", "32", "--trainer.logger", "a=b"]
    args = mal.self_training.parse(parser, [*argv, "--minutes", "5"])
    assert args.minutes == 5.0
    assert args.overrides == ["--model.arch", "vit", "--trainer.max_epochs=3", "--data.crop_size", "32"] + [
        "--trainer.logger",
        "a=b",  # the value of the flag before it, not a setting of its own
    ]
