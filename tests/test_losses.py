import torch

from mal.crf import mean_field
from mal.losses import crf_loss, crf_pseudo_label, dice_loss, mil_loss, ramp


def box_mask(size=32, box=(8, 8, 24, 20)):
    mask = torch.zeros(1, 1, size, size)
    x0, y0, x1, y1 = box
    mask[..., y0:y1, x0:x1] = 1
    return mask


def ellipse_in(box=(8, 8, 24, 20), size=32):
    x0, y0, x1, y1 = box
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).float()[None, None]


def test_dice_is_zero_for_equal_masks_and_one_for_disjoint():
    a = box_mask()
    assert dice_loss(a, a).item() < 1e-4
    assert dice_loss(a, 1 - a).item() > 0.999


def test_mil_loss_of_a_mask_inside_its_box_is_near_zero():
    # An ellipse touching all four sides of its box fills every row and column bag of the box.
    assert mil_loss(ellipse_in(), box_mask()).item() < 0.02


def test_mil_loss_penalises_a_mask_spilling_out_of_the_box():
    inside = mil_loss(box_mask(), box_mask()).item()
    spilled = mil_loss(box_mask(box=(4, 8, 28, 20)), box_mask()).item()
    assert inside < 1e-4 and spilled > 0.1


def test_mil_loss_penalises_a_mask_missing_part_of_the_box():
    assert mil_loss(box_mask(box=(8, 8, 16, 20)), box_mask()).item() > 0.1


def test_mean_field_keeps_the_prior_on_a_flat_image():
    unary = torch.full((1, 1, 8, 8), 0.8)
    refined = mean_field(unary, torch.zeros(1, 3, 8, 8), num_iter=10)
    assert (refined > 0.8).all()  # agreeing neighbours only reinforce


def test_crf_pseudo_label_follows_a_colour_edge():
    # Image: left half red, right half blue; box covers columns 4..28; the prediction is unsure
    # everywhere in the box. Outside-box pixels (clamped to 0.1) pull the blue part of the box
    # to background; the red part of the box stays foreground.
    image = torch.zeros(1, 3, 32, 32)
    image[:, 0, :, :16] = 1.0
    image[:, 2, :, 16:] = 1.0
    box = box_mask(box=(4, 0, 28, 32))
    box[..., :, 28:] = 0
    pred = torch.full((1, 1, 32, 32), 0.5)
    pred[..., :, 4:16] = 0.6  # slightly more confident on the red side
    label = crf_pseudo_label(pred, pred, box, image, kernel_size=3, zeta=0.1, num_iter=50)
    assert label[0, 0, :, 4:16].mean() > 0.95
    assert label[0, 0, :, 16:].mean() < 0.05
    assert label[0, 0, :, :4].sum() == 0  # never outside the box
    assert crf_loss(label, label).item() < 1e-4


def test_ramp():
    assert ramp(0, 100) == 0 and ramp(50, 100) == 0.5 and ramp(500, 100) == 1 and ramp(3, 0) == 1
