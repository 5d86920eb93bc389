import numpy as np
import torch

from mal.crops import (
    box_mask_in_crop,
    crop_wrapped,
    expand_box,
    fixed_margins,
    paste_region,
    random_margins,
    resize_crop,
    resize_crops,
    roi_align_crops,
)
from mal.module import full_masks


def test_test_crop_is_1_3x_the_box():
    assert expand_box([100, 50, 200, 90], fixed_margins((0.6, 0.6))) == (85, 44, 215, 96)


def test_random_margins_are_gated_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = random_margins(rng, (0.0, 1.2))
        assert (m >= 0).all() and (m <= 1.2).all()
        assert m[0] + m[2] <= 1.2 + 1e-9 and m[1] + m[3] <= 1.2 + 1e-9


def test_crop_wraps_around_the_image():
    image = torch.arange(12).reshape(1, 3, 4)
    assert crop_wrapped(image, (-1, -1, 2, 1))[0].tolist() == [[11, 8, 9], [3, 0, 1]]
    assert crop_wrapped(image, (1, 1, 3, 3))[0].tolist() == [[5, 6], [9, 10]]  # inside: a plain slice


def test_crop_and_paste_round_trip_lands_on_the_box():
    """A box mask taken into the resized crop frame and pasted back covers the box within one pixel."""
    height, width, size = 120, 160, 64
    for box in ([30.0, 20.0, 90.0, 70.0], [0.0, 0.0, 25.5, 117.2], [140.3, 100.1, 159.9, 119.8], [10, 10, 13, 12]):
        crop_box = expand_box(box, fixed_margins((0.6, 0.6)))
        crop_mask = box_mask_in_crop(box, crop_box, size)
        logits = crop_mask * 20 - 10  # confident inside, outside
        x0, y0, probs = paste_region(logits, crop_box, box, (height, width))
        pasted = full_masks([(x0, y0, (probs > 0.5).numpy())], height, width)[0]
        ys, xs = np.nonzero(pasted)
        expected = [np.floor(box[0]), np.floor(box[1]), np.ceil(box[2]) - 1, np.ceil(box[3]) - 1]
        got = [xs.min(), ys.min(), xs.max(), ys.max()]
        assert np.abs(np.array(got) - np.array(expected)).max() <= 1, (box, got, expected)


def test_batched_resize_matches_the_crop():
    image = torch.arange(3 * 40 * 50, dtype=torch.float32).reshape(3, 40, 50)
    boxes = torch.tensor([[10, 5, 20, 15], [0, 0, 50, 40]])
    for crops in (resize_crops(image, boxes, 10), roi_align_crops(image, boxes, 10)):
        assert crops.shape == (2, 3, 10, 10)
        assert torch.allclose(crops[0], image[:, 5:15, 10:20])  # same size: an exact copy
        assert torch.allclose(crops[1].mean(), image.mean(), rtol=1e-3)


def test_cpu_prediction_crops_use_the_training_crop_functions_and_roi_align_approximates_them():
    """On a CPU a prediction crop is made by the functions that make training crops (`BoxCropDataset`), before
    their rounding to uint8; the batched roi_align path used on other devices approximates it."""
    ys, xs = torch.meshgrid(torch.arange(90.0), torch.arange(120.0), indexing="ij")
    image = torch.stack([127 + 100 * torch.sin(xs / 7) * torch.cos(ys / (9 + c)) for c in range(3)]).to(torch.uint8)
    boxes = torch.tensor([[10, 5, 70, 50], [-30, -10, 100, 95], [0, 0, 120, 90], [60, 40, 64, 43]])
    crops = resize_crops(image, boxes, 32)
    for box, crop in zip(boxes.tolist(), crops):
        assert torch.equal(crop, resize_crop(crop_wrapped(image, box), 32))
    approx = roi_align_crops(image, boxes, 32)
    assert (approx - crops).abs().mean() < 0.05 * crops.std()
