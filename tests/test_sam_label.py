"""`sam label`: SAM 3 text -> boxes + masks on coco128 images with a tiny random model, through Grounding DINO's
inputs, passes and writer; checked against transformers' processor + model + post_process_instance_segmentation."""

import json
import shutil

import numpy as np
import pytest
import torch
from sam_helpers import COCO128_IMAGES, model_dir, needs_coco128, run_sam
from transformers import AutoModel, AutoProcessor

from gdino.data import GroundingDinoDataModule
from labelkit.coco import load_coco
from labelkit.images import decode_image
from labelkit.masks import segmentation_to_mask
from sam.__main__ import cli_main
from sam.errors import SamError
from sam.text_module import Sam3Labeler

pytestmark = needs_coco128
CLASSES = ["person", "yellow school bus", "dog"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam3_images")
    for path in sorted(COCO128_IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    return model_dir(tmp_path_factory, "sam3")


def reference(sam3, image_path, text: str, threshold: float) -> dict:
    """transformers' loop for one image and one concept."""
    processor, model = AutoProcessor.from_pretrained(sam3), AutoModel.from_pretrained(sam3).eval()
    image = decode_image(image_path)
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return processor.post_process_instance_segmentation(out, threshold=threshold, target_sizes=[image.shape[:2]])[0]


def label_records(sam3, images, **model_kwargs) -> tuple[Sam3Labeler, list[dict]]:
    data = GroundingDinoDataModule(image_dir=str(images), class_names=CLASSES, batch_size=2)
    labeler = Sam3Labeler(str(sam3), precision="fp32", **model_kwargs)
    labeler.set_vocabulary(data.vocabulary)
    return labeler, [record for batch in data.predict_dataloader() for record in labeler.predict_step(batch)]


def median_score(sam3, images) -> float:
    """A threshold with about half of the tiny random model's instances above it (its scores sit near 0.25)."""
    _, records = label_records(sam3, images, iteration_scheduler=[{"conf_threshold": 0.0}], aggregation="none")
    return float(np.median([d["score"] for r in records for d in r["detections"]]))


def test_one_pass_gives_the_instances_of_transformers_loop(sam3, images):
    threshold = median_score(sam3, images)
    _, records = label_records(
        sam3, images, iteration_scheduler=[{"conf_threshold": threshold}], aggregation="none", max_dets_per_image=None
    )
    compared = 0
    for record in records:
        for c, name in enumerate(CLASSES):
            ours = [d for d in record["detections"] if d["category_id"] == c + 1]
            expected = reference(sam3, images / record["file_name"], name, threshold)
            order = expected["scores"].argsort(descending=True, stable=True)
            assert [d["score"] for d in ours] == [round(float(s), 4) for s in expected["scores"][order]]
            for d, box, mask in zip(ours, expected["boxes"][order].tolist(), expected["masks"][order]):
                x1, y1, x2, y2 = box
                assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
                ours_mask = segmentation_to_mask(d["segmentation"], record["height"], record["width"])
                assert (ours_mask == mask.numpy()).all() and d["mask_area"] == int(mask.sum())
                compared += 1
    assert compared >= 6


def test_each_image_and_prompt_runs_once_over_all_passes(sam3, images):
    data = GroundingDinoDataModule(image_dir=str(images), class_names=CLASSES, batch_size=3)
    passes = [{"conf_threshold": 0.99}, {"conf_threshold": 0.0}]
    labeler = Sam3Labeler(str(sam3), precision="fp32", iteration_scheduler=passes)
    labeler.set_vocabulary(data.vocabulary)
    forwards = []
    labeler.model.detr_decoder.register_forward_hook(lambda *args: forwards.append(1))
    batches = list(data.predict_dataloader())  # a batch holds images of one size
    records = [record for batch in batches for record in labeler.predict_step(batch)]
    for record in records:  # nothing beats 0.99: every class asked again in pass 1, found there
        assert record["passes"] == [{"pass": 0, "queried": [1, 2, 3]}, {"pass": 1, "queried": [1, 2, 3]}]
        assert {(d["pass"], d["threshold"]) for d in record["detections"]} == {(1, 0.0)}
    assert len(forwards) == len(CLASSES) * len(batches)  # one forward per prompt and batch, in pass 0 only
    assert labeler.segmenter.text_runs == len(CLASSES)  # each class name encoded once


def test_classes_found_early_are_not_asked_again_and_class_thresholds_apply(sam3, images):
    _, records = label_records(
        sam3,
        images,
        iteration_scheduler=[{"conf_threshold": 0.99}, {"conf_threshold": 0.0}],
        class_thresholds={"Dog": 0.0},
    )
    for record in records:
        assert record["passes"] == [{"pass": 0, "queried": [1, 2, 3]}, {"pass": 1, "queried": [1, 2]}]
        by_class = {(d["class"], d["pass"], d["threshold"]) for d in record["detections"]}
        assert by_class == {("dog", 0, 0.0), ("person", 1, 0.0), ("yellow school bus", 1, 0.0)}


def label_args(sam3, images, out, *extra: str) -> list[str]:
    return [
        "label",
        *("--model.path", str(sam3), "--data.image_dir", str(images), "--data.class_names", json.dumps(CLASSES)),
        *("--output", str(out), "--writer.odvg_path", str(out.parent / "odvg.jsonl")),
        *("--model.schedule", '{"type": "step", "start": 0.26, "end": 0.24, "num_passes": 3}'),
        *("--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--data.batch_size", "2"),
        *extra,
    ]


def test_label_writes_coco_with_boxes_masks_and_scores_and_odvg(sam3, images, tmp_path):
    out = tmp_path / "labels.json"
    cli_main(label_args(sam3, images, out))
    coco = load_coco(out, images)  # valid COCO with masks
    result = json.loads(out.read_text())
    assert [c["name"] for c in result["categories"]] == CLASSES and len(result["images"]) == 3
    assert result["annotations"] and [a["id"] for a in result["annotations"]] == list(
        range(1, len(coco.annotations) + 1)
    )
    sizes = {im["id"]: (im["height"], im["width"]) for im in result["images"]}
    for ann in result["annotations"]:
        assert ann["area"] == int(segmentation_to_mask(ann["segmentation"], *sizes[ann["image_id"]]).sum())
        assert 0 < ann["score"] <= 1 and ann["pass"] in (0, 1, 2)
    lines = [json.loads(line) for line in (tmp_path / "odvg.jsonl").read_text().splitlines()]
    assert sum(len(line["detection"]["instances"]) for line in lines) == len(result["annotations"])
    assert json.loads((tmp_path / "labelmap.json").read_text()) == {str(i): n for i, n in enumerate(CLASSES)}

    two = tmp_path / "two" / "labels.json"
    run_sam(*label_args(sam3, images, two, "--trainer.devices", "2", "--trainer.strategy", "ddp"))
    assert two.read_bytes() == out.read_bytes()  # one process and two write the same file


def test_label_refuses_a_box_model_and_bad_vocabularies(sam3, images, tmp_path_factory, tmp_path):
    with pytest.raises(SamError, match="holds a 'sam' model; text prompts need SAM 3"):
        Sam3Labeler(str(model_dir(tmp_path_factory, "sam")))
    with pytest.raises(ValueError, match=r"data.class_names\[1\]: 'person' duplicates"):
        cli_main([*label_args(sam3, images, tmp_path / "x.json"), "--data.class_names", "[person, person]"])


def test_noun_chunks_ask_each_image_its_own_phrases(sam3, images, tmp_path):
    names = sorted(p.name for p in images.glob("*.jpg"))
    chunks = {names[0]: ["a red car", "person"], names[1]: ["person"], names[2]: ["yellow school bus", "a dog"]}
    jsonl = tmp_path / "chunks.jsonl"
    jsonl.write_text("".join(json.dumps({"file_name": n, "noun_chunks": c}) + "\n" for n, c in chunks.items()))
    data = GroundingDinoDataModule(image_dir=str(images), noun_chunk_path=str(jsonl), batch_size=3)
    labeler = Sam3Labeler(str(sam3), precision="fp32", iteration_scheduler=[{"conf_threshold": 0.0}])
    labeler.set_vocabulary(data.vocabulary)
    records = [record for batch in data.predict_dataloader() for record in labeler.predict_step(batch)]
    for record in records:
        assert {d["prompt"] for d in record["detections"]} == set(chunks[record["file_name"]])
    assert labeler.segmenter.text_runs == 4  # person is encoded once for both images that name it
