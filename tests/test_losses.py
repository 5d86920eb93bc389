import torch

from mal.crf import colour_log_ratio, image_at, mean_field, neighbours, refine_logits
from mal.losses import crf_loss, crf_pseudo_label, dice_loss, lab_similarity, mil_loss, pairwise_loss, ramp


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


def two_colour_image(size=32, edge=16):
    """Left of column `edge` red, right of it blue (B x 3 x H x W in [0, 1])."""
    image = torch.zeros(1, 3, size, size)
    image[:, 0, :, :edge] = 1.0
    image[:, 2, :, edge:] = 1.0
    return image


def test_neighbours_with_dilation_skip_pixels():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    near = neighbours(x, 3, dilation=2)[0, 0, :, 2, 2]  # the 8 pixels two steps from the centre (12)
    assert near.tolist() == [0, 2, 4, 10, 14, 20, 22, 24]


def test_lab_similarity_is_one_within_a_colour_and_small_across_an_edge():
    similarity = lab_similarity(two_colour_image(), kernel_size=3, dilation=2)
    assert torch.allclose(similarity[0, :, :, 4], torch.ones(8, 32))  # all neighbours red
    assert similarity[0, :, :, 15].min() < 1e-10  # red next to blue: Lab distance ~176


def test_pairwise_loss_lets_the_label_change_only_at_a_colour_edge():
    image = two_colour_image()
    similarity = lab_similarity(image)
    box = box_mask(box=(4, 4, 28, 28))
    at_edge = torch.full((1, 1, 32, 32), -6.0)
    at_edge[..., :16] = 6.0  # foreground exactly on the red half
    off_edge = torch.full((1, 1, 32, 32), -6.0)
    off_edge[..., :10] = 6.0  # changes label inside the red half
    unsure = torch.zeros(1, 1, 32, 32)
    loss_at, loss_off, loss_unsure = (pairwise_loss(x, similarity, box).item() for x in (at_edge, off_edge, unsure))
    assert loss_at < 0.01 < loss_off
    assert abs(loss_unsure - torch.log(torch.tensor(2.0)).item()) < 1e-4  # p = 0.5: P(same) = 1/2


def test_pairwise_loss_ignores_edges_from_outside_the_box():
    similarity = lab_similarity(two_colour_image())
    logits = torch.full((1, 1, 32, 32), -6.0)
    logits[..., :10] = 6.0  # a label change at column 10 ...
    assert pairwise_loss(logits, similarity, box_mask(box=(16, 4, 28, 28))).item() < 0.01  # ... left of the box


def test_refine_logits_snaps_an_unsure_mask_to_the_object_colour():
    # A red object (crop rows 16-47, columns 16-39) on blue, in a box 4 pixels larger on every side; the
    # logits are equally unsure over the whole box. The blue rim of the box joins the blue outside it
    # (background); the red stays foreground.
    crop = torch.zeros(1, 3, 64, 64)
    crop[:, 2] = 255
    crop[:, :, 16:48, 16:40] = torch.tensor([255.0, 0, 0]).view(3, 1, 1)
    box = torch.zeros(1, 64, 64)
    box[:, 12:52, 12:44] = 1
    refined = refine_logits(torch.full((1, 16, 16), 0.4), crop.to(torch.uint8), box, size=32, kernel_size=5)
    assert refined.shape == (1, 16, 16)
    inside_object = torch.zeros(16, 16, dtype=torch.bool)
    inside_object[4:12, 4:10] = True
    assert (refined[0][inside_object] > 0).all() and (refined[0][~inside_object] < 0).all()


def red_ring_on_blue() -> tuple[torch.Tensor, torch.Tensor]:
    """A 64 x 64 crop: blue, with a red square ring (rows / columns 16-47, 8 pixels thick) whose hole is blue
    too, and its box (the ring's outline)."""
    crop = torch.zeros(1, 3, 64, 64)
    crop[:, 2] = 255
    crop[:, :, 16:48, 16:48] = torch.tensor([255.0, 0, 0]).view(3, 1, 1)
    crop[:, :, 24:40, 24:40] = torch.tensor([0, 0, 255.0]).view(3, 1, 1)
    box = torch.zeros(1, 64, 64)
    box[:, 16:48, 16:48] = 1
    return crop.to(torch.uint8), box


def test_colour_log_ratio_favours_the_object_colour_per_crop():
    crop, box = red_ring_on_blue()
    image = image_at(crop, 64)
    foreground = box[:, None].clone()  # the whole box as object: red and some blue
    ratio = colour_log_ratio(image, foreground, box[:, None])
    red = (crop[0, 0] == 255) & (crop[0, 2] == 0)
    assert (ratio[0, 0][red] > 1).all() and (ratio[0, 0][~red] < 0).all()
    # a second crop of the batch with the colours swapped gets its own histograms
    swapped = torch.cat([image, image.flip(1)])
    ratios = colour_log_ratio(swapped, foreground.repeat(2, 1, 1, 1), box[:, None].repeat(2, 1, 1, 1))
    assert torch.equal(ratios[0], ratio[0]) and (ratios[1, 0][red] > 1).all()


def test_refine_logits_with_the_colour_model_drops_background_colour_inside_the_box():
    # Colour edges alone keep the ring's blue hole (it borders only the ring inside the box, and the logits
    # lean to foreground there); the colour model knows blue as the background's colour and drops it.
    crop, box = red_ring_on_blue()
    logits = torch.full((1, 16, 16), 0.4)
    edges_only = refine_logits(logits, crop, box, size=32, kernel_size=5)
    with_colour = refine_logits(logits, crop, box, size=32, kernel_size=5, colour_weight=1.0)
    hole, ring = torch.zeros(16, 16, dtype=torch.bool), torch.zeros(16, 16, dtype=torch.bool)
    hole[7:9, 7:9] = True
    ring[4:12, 4:12] = True
    ring[6:10, 6:10] = False
    assert (edges_only[0][hole] > 0).all()
    assert (with_colour[0][hole] < 0).all() and (with_colour[0][ring] > 0).all()


def test_refine_logits_unary_cap_lets_colour_overrule_a_confident_mask():
    # The model is sure (p = 0.95) of the whole box, blue hole included: capped at 0.95 the unary keeps the
    # hole; capped at 0.6 the colour model overrules it. A cap per crop treats each crop as its own cap would.
    crop, box = red_ring_on_blue()
    logits = torch.full((1, 16, 16), torch.logit(torch.tensor(0.95)).item())
    hole = torch.zeros(16, 16, dtype=torch.bool)
    hole[7:9, 7:9] = True

    def refine(crops, boxes, high):
        return refine_logits(logits.expand(len(crops), -1, -1), crops, boxes, 32, 5, colour_weight=1.0, high=high)

    sure, capped = refine(crop, box, 0.95), refine(crop, box, 0.6)
    assert (sure[0][hole] > 0).all() and (capped[0][hole] < 0).all()
    both = refine(crop.repeat(2, 1, 1, 1), box.repeat(2, 1, 1), torch.tensor([0.95, 0.6]))
    assert torch.allclose(both[0], sure[0]) and torch.allclose(both[1], capped[0])


def test_ramp():
    assert ramp(0, 100) == 0 and ramp(50, 100) == 0.5 and ramp(500, 100) == 1 and ramp(3, 0) == 1
