"""GrabCut after the refinement: colour decides the box's uncertain pixels, the seeds hold."""

import numpy as np
import torch

from mal.grabcut import grabcut_masks


def disc_in_box(size: int = 64):
    """A red disc on a blue crop, its box 40 x 40 around it; a near-box mask that is sure only of its core."""
    ys, xs = np.mgrid[:size, :size]
    disc = (ys - 32) ** 2 + (xs - 32) ** 2 <= 12**2
    crop = np.zeros((3, size, size), np.uint8)
    crop[2] = 200
    crop[0][disc], crop[2][disc] = 220, 30
    box = np.zeros((size, size), bool)
    box[12:52, 12:52] = True
    probs = np.where(box, 0.7, 0.0)
    probs[(ys - 32) ** 2 + (xs - 32) ** 2 <= 5**2] = 0.97
    return torch.from_numpy(probs).float()[None], torch.from_numpy(crop)[None], torch.from_numpy(box)[None], disc


def iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_colour_cuts_the_object_out_of_its_box():
    probs, crop, box, disc = disc_in_box()
    cut = grabcut_masks(probs, crop, box, torch.tensor([0.5]), sure=0.9, num_iter=3)
    assert cut.shape == (1, 64, 64) and cut.dtype == torch.bool
    assert iou((probs[0] > 0.5).numpy(), disc) < 0.6  # the mask it starts from is the box
    assert iou(cut[0].numpy(), disc) > 0.95
    assert not (cut[0].numpy() & ~box[0].numpy()).any()  # outside the box is background for certain


def test_too_few_pixels_on_one_side_keeps_the_thresholded_mask():
    probs, crop, box, _ = disc_in_box()
    empty = torch.zeros_like(probs)  # no foreground seed: GrabCut cannot build an object colour model
    assert not grabcut_masks(empty, crop, box, torch.tensor([0.5])).any()
    full = torch.ones(1, 64, 64)
    whole = torch.ones_like(box)  # the box is the whole crop and every pixel is foreground
    assert grabcut_masks(full, crop, whole, torch.tensor([0.5])).all()


def test_each_crop_uses_its_own_threshold():
    probs, crop, box, disc = disc_in_box()
    cuts = grabcut_masks(probs.repeat(2, 1, 1), crop.repeat(2, 1, 1, 1), box.repeat(2, 1, 1), torch.tensor([0.5, 0.8]))
    assert iou(cuts[0].numpy(), disc) > 0.95  # 0.7 is probably foreground: colour decides
    assert iou(cuts[1].numpy(), disc) > 0.95  # 0.7 is probably background: colour decides again
    loose = grabcut_masks(probs, crop, box, torch.tensor([0.5]), sure=0.5)  # the whole box seeded as certain
    assert loose[0].numpy().sum() == box[0].numpy().sum()
    # where the threshold alone decides (the box is the crop, no certain seeds: one side stays empty), two crops
    # alike but for their thresholds get opposite masks
    flat, whole = torch.full((2, 64, 64), 0.7), torch.ones(2, 64, 64, dtype=torch.bool)
    decided = grabcut_masks(flat, crop.repeat(2, 1, 1, 1), whole, torch.tensor([0.5, 0.8]))
    assert decided[0].all() and not decided[1].any()


def test_a_crops_mask_does_not_depend_on_its_batch():
    """GrabCut's k-means start draws from the thread's RNG: each crop is seeded alike, so a crop cut after
    others on the same thread (one thread here) gets the mask it gets alone."""
    probs, _, box, _ = disc_in_box()
    crops = torch.randint(0, 256, (6, 3, 64, 64), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = grabcut_masks(probs.repeat(6, 1, 1), crops, box.repeat(6, 1, 1), torch.full((6,), 0.5))
        for i in range(6):
            alone = grabcut_masks(probs, crops[i : i + 1], box, torch.tensor([0.5]))
            assert torch.equal(alone[0], batch[i])
    finally:
        torch.set_num_threads(threads)
