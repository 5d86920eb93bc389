import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mal.crops import (
    box_mask_in_crop,
    crop_wrapped,
    expand_box,
    fixed_margins,
    make_crop,
    make_training_crop,
    paste_probabilities,
    random_margins,
)
from mal.module import full_masks


def test_test_crop_box_follows_the_original_rule():
    """REFERENCE.md 2a: expand by 0.3 half-extents, +1 right/bottom, floor left/top, ceil right/bottom."""
    assert expand_box([10, 20, 50, 60], fixed_margins((0.6, 0.6))) == (4, 14, 57, 67)
    assert expand_box([100, 50, 200, 90], fixed_margins((0.6, 0.6))) == (85, 44, 216, 97)
    # coco128 box 605219 and the crop box the original computed for it (../shared/parity/mal/README.md)
    assert expand_box([463.86, 229.41, 463.86 + 18.75, 229.41 + 6.3], fixed_margins((0.6, 0.6))) == (461, 228, 487, 238)


def test_random_margins_are_gated_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = random_margins(rng, (0.0, 1.2))
        assert (m >= 0).all() and (m <= 1.2).all()
        assert m[0] + m[2] <= 1.2 + 1e-9 and m[1] + m[3] <= 1.2 + 1e-9


def test_crop_wraps_around_the_image():
    image = np.arange(12).reshape(3, 4)
    assert crop_wrapped(image, (-1, -1, 2, 1)).tolist() == [[11, 8, 9], [3, 0, 1]]
    assert crop_wrapped(image, (1, 1, 3, 3)).tolist() == [[5, 6], [9, 10]]  # inside: a plain slice


def test_crop_is_pil_bicubic_of_the_uint8_cut():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    crop = make_crop(image, (-5, 3, 30, 20), 32)
    cut = image[np.arange(3, 20)[:, None], np.arange(-5, 30)[None, :] % 60]
    expected = np.asarray(Image.fromarray(cut).resize((32, 32), Image.BICUBIC))
    assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32)
    assert np.array_equal(crop.permute(1, 2, 0).numpy(), expected)


def test_crop_and_paste_round_trip_lands_on_the_box():
    """A box mask taken into the resized crop frame and pasted back covers the box's pixels."""
    height, width, size = 120, 160, 64
    for box in ([30.0, 20.0, 90.0, 70.0], [0.0, 0.0, 25.5, 117.2], [140.3, 100.1, 159.9, 119.8], [10, 10, 13, 12]):
        crop_box = expand_box(box, fixed_margins((0.6, 0.6)))
        box_mask = box_mask_in_crop(box, crop_box, size)
        assert set(box_mask.unique().tolist()) == {0, 1}
        logits = torch.full((16, 16), 10.0)  # confident everywhere: the box mask alone shapes the result
        x0, y0, probs = paste_probabilities(logits, box_mask, crop_box, (height, width))
        pasted = full_masks([(x0, y0, (probs > 0.5).numpy())], height, width)[0]
        ys, xs = np.nonzero(pasted)
        expected = [np.floor(box[0]), np.floor(box[1]), np.ceil(box[2]) - 1, np.ceil(box[3]) - 1]
        got = [xs.min(), ys.min(), xs.max(), ys.max()]
        assert np.abs(np.array(got) - np.array(expected)).max() <= 1, (box, got, expected)


def test_paste_of_a_crop_reaching_outside_keeps_only_the_image_part():
    box_mask = torch.ones(8, 8, dtype=torch.uint8)
    x0, y0, probs = paste_probabilities(torch.zeros(4, 4), box_mask, (-3, -2, 5, 6), (4, 4))
    assert (x0, y0, tuple(probs.shape)) == (0, 0, (4, 4))
    x0, y0, probs = paste_probabilities(torch.zeros(4, 4), box_mask, (10, 10, 12, 12), (4, 4))
    assert probs.numel() == 0


def test_training_crop_is_the_same_cut_resized_antialiased():
    """Training keeps its own resize (antialiased bilinear learnt better from scratch than PIL bicubic)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    crop = make_training_crop(image, (-5, 3, 30, 20), 16)
    cut = torch.from_numpy(image[np.arange(3, 20)[:, None], np.arange(-5, 30)[None, :] % 60]).permute(2, 0, 1)
    resized = F.interpolate(cut[None].float(), size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert crop.dtype == torch.uint8 and torch.equal(crop, resized[0].round().clamp(0, 255).to(torch.uint8))
    assert not torch.equal(crop, make_crop(image, (-5, 3, 30, 20), 16))  # the test path's PIL bicubic differs
