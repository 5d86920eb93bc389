"""SAM as an `auto_label generate` stage: box -> mask from a COCO file, and the mask stage after Grounding DINO."""

import json
import shutil

import lightning as L
import pytest
from gdino_helpers import SMALL_SIZE, needs_vocab
from omegaconf import OmegaConf
from sam_helpers import COCO128_IMAGES, coco128_boxes, model_dir, needs_coco128

from gdino.__main__ import label
from labelkit.masks import segmentation_to_mask
from sam.spec import SPEC_SCHEMA, spec_problem
from sam.stage import sam_stage

pytestmark = needs_coco128
TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}


def run(stage) -> dict:
    trainer = L.Trainer(**TRAINER, callbacks=[stage.writer], use_distributed_sampler=False)
    trainer.predict(stage.module, datamodule=stage.data, return_predictions=False)
    return stage.writer.summary


def test_stage_labels_the_boxes_of_a_coco_file(tmp_path_factory, tmp_path):
    boxes = coco128_boxes(tmp_path / "boxes.json", num_images=2)
    out = tmp_path / "sam" / "labels.json"
    stage = sam_stage(str(model_dir(tmp_path_factory, "sam")), boxes, COCO128_IMAGES, out, num_workers=0)
    summary = run(stage)
    assert stage.module.precision_name == "fp32" and stage.module.precision_reason
    source = json.loads(boxes.read_text())["annotations"]
    assert summary["boxes"] == sum(not a["iscrowd"] for a in source) and summary["images"] == 2
    assert summary["degenerate_boxes"] == summary["clipped_boxes"] == summary["outside_boxes"] == 1
    labels = [a for a in json.loads(out.read_text())["annotations"] if "sam_score" in a]
    assert len(labels) == summary["boxes"] and summary["masks"] == sum(a["area"] > 0 for a in labels)


def test_bad_boxes_stop_the_stage_before_the_weights(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": "x", "name": "a"}]}))
    with pytest.raises(ValueError, match=r"categories\[0\] \(id 'x'\)"):
        sam_stage(str(tmp_path / "absent_model"), bad, tmp_path, tmp_path / "labels.json")


@needs_vocab
def test_masks_for_grounding_dinos_boxes(gdino_model_dir, tmp_path_factory, tmp_path):
    """text2mask with `mask_labeler: sam`: Grounding DINO's COCO file is the stage's input."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(COCO128_IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(path, images)
    boxes = tmp_path / "grounding_dino" / "labels.json"
    size = json.dumps(SMALL_SIZE)
    label(
        [
            *("--model.path", str(gdino_model_dir), "--model.image_size", size, "--model.precision", "fp32"),
            *("--model.iteration_scheduler", '[{"conf_threshold": 0.0}]', "--model.max_dets_per_image", "3"),
            *("--data.image_dir", str(images), "--data.class_names", "[person, dog]", "--output", str(boxes)),
            *("--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"),
        ]
    )
    detections = json.loads(boxes.read_text())
    assert len(detections["annotations"]) == 9
    out = tmp_path / "sam" / "labels.json"
    summary = run(sam_stage(str(model_dir(tmp_path_factory, "sam2")), boxes, images, out, num_workers=0))
    labels = json.loads(out.read_text())
    assert summary["boxes"] == 9 and labels["images"] == detections["images"]
    sizes = {im["id"]: (im["height"], im["width"]) for im in labels["images"]}
    for ann, det in zip(labels["annotations"], detections["annotations"]):
        assert ann["bbox"] == det["bbox"] and ann["score"] == det["score"]  # Grounding DINO's box and score kept
        assert ann["area"] == int(segmentation_to_mask(ann["segmentation"], *sizes[ann["image_id"]]).sum())


def spec(**values):
    return OmegaConf.create({"autolabel_type": "sam", "mask_labeler": "mal", "sam": SPEC_SCHEMA, **values})


class Spec:
    """auto_label.spec.Spec's two questions (the value of a dotted key, whether the user set it)."""

    def __init__(self, config, user_keys=()):
        self.config, self.user_keys = config, set(user_keys)

    def get(self, key):
        return OmegaConf.select(self.config, key)

    def is_set(self, key):
        return key in self.user_keys


def test_spec_problems_name_the_key():
    assert spec_problem(Spec(spec()), "mal") is None
    assert "sam.checkpoint (a Hugging Face model directory) is required" in spec_problem(Spec(spec()), "sam")
    with_sam = spec(mask_labeler="sam", sam={**SPEC_SCHEMA, "checkpoint": "m"})
    assert spec_problem(Spec(with_sam), "text2mask") is None
    assert "sam.inference.ann_path is required" in spec_problem(Spec(with_sam), "sam")
    bad = spec(mask_labeler="sam", sam={**SPEC_SCHEMA, "checkpoint": "m", "multimask": "all"})
    assert "sam.multimask must be one of best, first, single, got 'all'" in spec_problem(Spec(bad), "text2mask")
    assert "mask_labeler must be one of mal, sam" in spec_problem(Spec(spec(mask_labeler="sem")), "text2mask")
    stray = Spec(with_sam, ["sam.inference.ann_path"])
    assert "sam.inference.ann_path is not used by text2mask" in spec_problem(stray, "text2mask")
