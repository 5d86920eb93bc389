"""Our batched path (one embedding per image, boxes in chunks, only the chosen mask upscaled) gives the masks
of transformers' own loop: processor(images, input_boxes) -> model(**inputs) -> processor.post_process_masks."""

import json

import numpy as np
import pytest
import torch
from sam_helpers import COCO128_IMAGES, coco128_boxes, model_dir, needs_coco128

from labelkit.coco import load_coco
from labelkit.images import decode_image
from mal.data import ImageBoxesDataset
from sam.boxes import choose_masks
from sam.data import NO_CROPS, BoxPromptDataset
from sam.module import SamBoxLabeler
from sam.tiny import BOX_FAMILIES

pytestmark = needs_coco128


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    return coco128_boxes(tmp_path_factory.mktemp("sam_fidelity") / "boxes.json", num_images=2, odd_boxes=False)


def our_results(labeler: SamBoxLabeler, boxes) -> list[list[dict]]:
    coco = load_coco(boxes, COCO128_IMAGES)
    images = ImageBoxesDataset(coco, NO_CROPS["test_margin_rate"], NO_CROPS["crop_size"])
    family = labeler.segmenter.family
    samples = list(BoxPromptDataset(images, labeler.segmenter.image_processor, family.padded))
    return labeler.predict_images(samples), samples


def reference_masks(labeler: SamBoxLabeler, processor, sample: dict, choice: str):
    """transformers' loop for one image: every box at once, all K masks upscaled, then one chosen per box."""
    image = decode_image(sample["path"])
    boxes = sample["boxes"].tolist()
    inputs = processor(images=image, input_boxes=[boxes], return_tensors="pt")
    with torch.no_grad():
        out = labeler.model(**inputs, multimask_output=choice != "single")
    sizes = [inputs["original_sizes"]] + ([inputs["reshaped_input_sizes"]] if "reshaped_input_sizes" in inputs else [])
    masks = processor.post_process_masks(out.pred_masks, *sizes)[0]  # N x K x H x W bool
    chosen, ious = choose_masks(masks.float(), out.iou_scores[0], choice)
    return chosen.bool().numpy(), ious.numpy()


@pytest.mark.parametrize("family", BOX_FAMILIES)
@pytest.mark.parametrize("choice", ["best", "first", "single"])
def test_batched_path_gives_the_masks_of_transformers_loop(family, choice, boxes, tmp_path_factory):
    from transformers import AutoProcessor

    path = model_dir(tmp_path_factory, family)
    labeler = SamBoxLabeler(str(path), precision="fp32", multimask=choice, boxes_per_forward=2)
    processor = AutoProcessor.from_pretrained(path)
    results, samples = our_results(labeler, boxes)
    coco = json.loads(boxes.read_text())
    paths = {im["id"]: COCO128_IMAGES / im["file_name"] for im in coco["images"]}
    compared = partial = 0  # partial: masks neither empty nor the whole image
    for sample, image_results in zip(samples, results):
        expected, ious = reference_masks(labeler, processor, {**sample, "path": paths[sample["image_id"]]}, choice)
        height, width = expected.shape[1:]
        for i, result in enumerate(image_results):
            mask = np.zeros((height, width), dtype=bool)
            region = result["mask"]
            mask[result["y0"] : result["y0"] + region.shape[0], result["x0"] : result["x0"] + region.shape[1]] = region
            assert (mask == expected[i]).all(), f"{family} {choice}: box {i} of image {sample['image_id']}"
            assert result["score"] == pytest.approx(float(ious[i]), abs=1e-6)
            compared += 1
            partial += 0 < expected[i].mean() < 1
    assert compared >= 5 and partial >= compared // 2


def test_each_image_is_embedded_once_and_its_boxes_decoded_in_chunks(boxes, tmp_path_factory):
    labeler = SamBoxLabeler(str(model_dir(tmp_path_factory, "sam")), precision="fp32", boxes_per_forward=2)
    calls = {"vision_encoder": [], "mask_decoder": []}
    for name, calls_of in calls.items():
        getattr(labeler.model, name).register_forward_hook(lambda m, args, out, calls_of=calls_of: calls_of.append(1))
    results, samples = our_results(labeler, boxes)
    assert len(calls["vision_encoder"]) == 1  # both images in one forward
    chunks = sum(-(-len(s["boxes"]) // 2) for s in samples)
    assert len(calls["mask_decoder"]) == chunks and sum(len(r) for r in results) > chunks
