"""What a labelling run writes depends on its input and settings only: not on how the work is cut (images per
batch, boxes per forward pass, processes) and not on the working directory. On a CPU in fp32 (what `precision:
auto` labels in there) the files are byte-identical, `mal_score` included; beneath them, a box's logits must not
depend on the other boxes of its forward pass, bit for bit, or rounding hides the difference only until a large
enough set of images brings it out."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from auto_label_helpers import mal_predict_args, mal_spec_dict, tiny_assets, write_spec
from conftest import REPO, TINY_MAL_ARGS
from test_distributed import generate_in_processes
from test_resume import ONE_THREAD

from auto_label.__main__ import cli
from labelkit.coco import load_coco
from mal.__main__ import cli_main
from mal.data import ImageBoxesDataset
from mal.module import MALModule, box_areas

TWO_PROCESSES = ("--trainer.devices", "2", "--trainer.strategy", "ddp")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def crowded(assets, tmp_path_factory) -> dict:
    """The 12 test images with 10 boxes each (their own objects and random boxes, some reaching out of the
    image), so that 2 boxes a forward pass cut every image's boxes into several passes."""
    data = json.loads(assets["boxes"].read_text())
    rng = np.random.default_rng(7)
    for image in data["images"]:
        own = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        for _ in range(10 - len(own)):
            w, h = rng.uniform(3, 70), rng.uniform(3, 60)
            x, y = rng.uniform(-15, image["width"] - 5), rng.uniform(-15, image["height"] - 5)
            bbox = [round(float(v), 2) for v in (x, y, w, h)]
            box = {"id": len(data["annotations"]) + 1, "image_id": image["id"], "category_id": 1, "bbox": bbox}
            data["annotations"].append({**box, "area": round(w * h, 2), "iscrowd": 0})
    path = tmp_path_factory.mktemp("crowded") / "boxes.json"
    path.write_text(json.dumps(data))
    return {"boxes": path, "images": assets["images"], "checkpoint": assets["mal_checkpoint"]}


def predict(crowded, out, *extra: str) -> bytes:
    """`mal predict` in this process (one torch thread, as the subprocesses): the labels file's bytes."""
    cli_main(mal_predict_args(crowded["checkpoint"], crowded["boxes"], crowded["images"], out, *extra))
    return out.read_bytes()


@pytest.fixture(scope="module")
def reference(crowded, tmp_path_factory) -> bytes:
    """One image a batch, all boxes of an image in one forward pass, one process."""
    out = tmp_path_factory.mktemp("reference") / "labels.json"
    labels = predict(crowded, out, "--data.eval_batch_size", "1", "--model.max_boxes_per_forward", "32")
    assert json.loads(labels)["annotations"][0]["mal_score"] > 0
    return labels


def test_mal_logits_of_a_box_do_not_depend_on_its_batch(crowded):
    """The files are rounded (scores to 5 decimals, masks at a threshold), which hides a last-bit difference on a
    dozen images but not on thousands: the logits themselves must be equal, bit for bit."""
    module = MALModule.load_from_checkpoint(crowded["checkpoint"], map_location="cpu", weights_only=True).eval()
    coco = load_coco(crowded["boxes"], crowded["images"])
    samples = list(ImageBoxesDataset(coco, (0.6, 0.6), module.hparams.crop_size))
    crops = module.normalise(torch.cat([s["crops"] for s in samples]))
    areas = torch.cat([box_areas(s["boxes"]) for s in samples])

    def logits(boxes_a_forward: int) -> torch.Tensor:
        chunks = zip(crops.split(boxes_a_forward), areas.split(boxes_a_forward))
        with torch.no_grad():
            return torch.cat([module.mask_logits(c, a) for c, a in chunks])

    alone = logits(1)
    for boxes_a_forward in (2, 3, 32):
        assert torch.equal(logits(boxes_a_forward), alone), f"{boxes_a_forward} boxes a forward pass"


@pytest.mark.parametrize(
    "setting",
    [("--data.eval_batch_size", "3"), ("--model.max_boxes_per_forward", "2")],
    ids=["3_images_a_batch", "2_boxes_a_forward"],
)
def test_mal_predict_output_does_not_depend_on_the_batch(crowded, reference, tmp_path, setting):
    assert predict(crowded, tmp_path / "labels.json", *setting) == reference


def test_mal_predict_output_does_not_depend_on_the_number_of_processes(crowded, reference, tmp_path):
    out = tmp_path / "labels.json"
    args = mal_predict_args(crowded["checkpoint"], crowded["boxes"], crowded["images"], out, *TWO_PROCESSES)
    command = [sys.executable, "-m", "mal", *args, "--data.eval_batch_size", "1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=ONE_THREAD, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_bytes() == reference


def generate_spec(crowded, results, batch_size: int):
    spec = mal_spec_dict(results, crowded["checkpoint"], crowded["boxes"], crowded["images"], num_workers=0)
    return write_spec(results.with_suffix(".yaml"), {**spec, "batch_size": batch_size})


def test_generate_output_does_not_depend_on_the_batch_or_the_number_of_processes(crowded, tmp_path):
    cli(["generate", "-e", str(generate_spec(crowded, tmp_path / "one", 1))])
    cli(["generate", "-e", str(generate_spec(crowded, tmp_path / "three", 3))])
    generate_in_processes(generate_spec(crowded, tmp_path / "two", 1), 2)
    assert json.loads((tmp_path / "two" / "report.json").read_text())["processes"] == 2
    one = (tmp_path / "one" / "labels.json").read_bytes()
    assert (tmp_path / "three" / "labels.json").read_bytes() == one
    assert (tmp_path / "two" / "labels.json").read_bytes() == one


def test_predict_with_a_training_config_writes_only_its_labels(crowded, tmp_path):
    """configs/mal/coco128_cpu.yaml configures CSV and TensorBoard loggers under runs/ and checkpoint callbacks:
    predicting with it leaves the working directory as it was, but for the labels asked for."""
    command = [
        *(sys.executable, "-m", "mal", "predict", "--config", str(REPO / "configs" / "mal" / "coco128_cpu.yaml")),
        *TINY_MAL_ARGS,
        *("--ckpt_path", str(crowded["checkpoint"]), "--writer.label_dump_path", "out/labels.json"),
        *("--data.predict_ann_path", str(crowded["boxes"]), "--data.predict_img_dir", str(crowded["images"])),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=ONE_THREAD, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["out", "out/labels.json"]
