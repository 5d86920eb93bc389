"""Prediction packs the boxes of several images into shared forward batches without changing any box's mask."""

import numpy as np
import torch
from torch._dynamo.utils import counters

from mal.crops import fixed_margins
from mal.data import box_crops
from mal.module import MALModule


def tiny_module(max_boxes_per_forward: int) -> MALModule:
    torch.manual_seed(0)
    return MALModule(
        arch="vit_tiny_patch16_224",
        crop_size=32,
        backbone_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        mask_head_hidden_channel=16,
        mask_head_out_channel=16,
        loss_size=32,
        mask_thres=0.5,
        max_boxes_per_forward=max_boxes_per_forward,
    ).eval()


def sample(seed: int, boxes: list[list[float]], height: int = 60, width: int = 80) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return box_crops(image, boxes, fixed_margins((0.6, 0.6)), 32)


def test_packed_prediction_matches_one_image_at_a_time():
    samples = [
        sample(0, [[5, 5, 30, 40], [40, 10, 79, 59], [0.5, 0.5, 1.0, 1.0]]),
        sample(1, []),  # no box: nothing to predict, and the packing skips it
        sample(2, [[10, 20, 50, 45]]),
        sample(3, [[2, 2, 70, 55], [60, 30, 75, 50]], height=64, width=96),
    ]
    packed = tiny_module(max_boxes_per_forward=4).predict_images(samples)  # batches cross image borders
    alone = [tiny_module(max_boxes_per_forward=32).predict_image(s) for s in samples]
    assert [len(r) for r in packed] == [3, 0, 1, 2]
    for image_packed, image_alone in zip(packed, alone):
        for a, b in zip(image_packed, image_alone):
            assert (a["x0"], a["y0"], a["degenerate"]) == (b["x0"], b["y0"], b["degenerate"])
            assert a["mask"].shape == b["mask"].shape
            assert (a["mask"] != b["mask"]).mean() <= 1e-3  # at most a rounding flip at the threshold
            assert abs(a["score"] - b["score"]) < 1e-4


def assert_same_masks(expected, actual):
    for image_expected, image_actual in zip(expected, actual, strict=True):
        for a, b in zip(image_expected, image_actual, strict=True):
            assert (a["x0"], a["y0"]) == (b["x0"], b["y0"])
            assert (a["mask"] != b["mask"]).mean() <= 1e-2
            assert abs(a["score"] - b["score"]) < 1e-3


def test_compiled_backbone_predicts_the_same_masks_and_follows_new_weights():
    samples = [sample(0, [[5, 5, 30, 40], [40, 10, 79, 59]]), sample(2, [[10, 20, 50, 45]])]
    module = tiny_module(max_boxes_per_forward=2)  # forwards of 2 crops, then 1
    keys = list(module.state_dict())

    def predict():  # in the mode Lightning predicts with `precision: bf16-mixed`
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            return module.predict_images(samples)

    eager = predict()
    module.hparams.compile_backbone = True
    torch._dynamo.reset()
    counters.clear()
    assert_same_masks(eager, predict())
    assert counters["stats"]["unique_graphs"] == 1  # compiled, and one graph serves 2 crops and 1
    assert list(module.state_dict()) == keys  # weights and their names untouched

    # Frozen weights are constants of the compiled graph: changing them must not keep the old values.
    with torch.no_grad():
        module.student.backbone.blocks[0].mlp.fc2.weight.mul_(-3.0)
        module.student.backbone.norm.bias.add_(0.5)
    compiled = predict()
    module.hparams.compile_backbone = False
    del module.student.backbone.forward_features
    new_eager = predict()
    assert_same_masks(new_eager, compiled)
    changed = [(a["mask"] != b["mask"]).mean() for x, y in zip(eager, new_eager) for a, b in zip(x, y)]
    assert max(changed) > 0.05  # the new weights do change the masks, so the check above can fail


def test_flip_test_is_mirror_symmetric_and_mixed_model_test_averages_student_and_teacher():
    module = tiny_module(max_boxes_per_forward=4)
    images, areas = torch.randn(3, 3, 32, 32), torch.tensor([100.0, 2000.0, 20000.0])
    with torch.no_grad():
        for p in module.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # a teacher unlike the student
        plain = module.mask_logits(images, areas)
        assert not torch.allclose(module.mask_logits(images.flip(-1), areas), plain.flip(-1), atol=1e-3)
        module.hparams.use_flip_test = True
        flip_test = module.mask_logits(images, areas)
        torch.testing.assert_close(module.mask_logits(images.flip(-1), areas), flip_test.flip(-1))
        size = module.student.logit_size
        mirrored = module.student(images.flip(-1), areas, size)[:, 0].flip(-1)
        torch.testing.assert_close(flip_test, (plain + mirrored) / 2)
        module.hparams.use_flip_test = False
        module.hparams.use_mixed_model_test = True
        teacher = module.teacher(images, areas, size)[:, 0]
        torch.testing.assert_close(module.mask_logits(images, areas), (plain + teacher) / 2)
