"""Self-training: the training boxes' own masks (a previous run's labels) as extra supervision."""

import json

import numpy as np
import torch
from PIL import Image

from labelkit.coco import load_coco
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
