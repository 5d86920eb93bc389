"""Threshold schedules and the pure annealing bookkeeping on hand-made score tensors."""

import pytest
import torch

from gdino.errors import GDinoError
from gdino.prompts import sanitize_name
from gdino.schedule import Pass, asked_prompts, build_schedule, class_threshold_table, select_pairs


def test_tao_default_and_explicit_list():
    assert build_schedule(None, None) == [Pass(0.5, 0.0)]
    passes = build_schedule([{"conf_threshold": 0.5, "nms_threshold": 0.7}, {"conf_threshold": 0.3}], None)
    assert passes == [Pass(0.5, 0.7), Pass(0.3, 0.0)]


@pytest.mark.parametrize("kind", ["step", "exponential", "cosine"])
def test_generated_schedules_fall_from_start_to_end(kind):
    passes = build_schedule(None, {"type": kind, "start": 0.5, "end": 0.2, "num_passes": 4})
    thresholds = [p.conf_threshold for p in passes]
    assert thresholds[0] == 0.5 and thresholds[-1] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(thresholds, thresholds[1:]))
    if kind == "step":
        assert thresholds == pytest.approx([0.5, 0.4, 0.3, 0.2])
    if kind == "exponential":
        ratios = [b / a for a, b in zip(thresholds, thresholds[1:])]
        assert ratios == pytest.approx([ratios[0]] * 3, rel=1e-4)


@pytest.mark.parametrize(
    ("scheduler", "schedule", "message"),
    [
        ([{"conf_threshold": 1.5}], None, r"iteration_scheduler\[0\].conf_threshold"),
        ([{"conf_threshold": 0.5, "nms": 0.1}], None, "unknown keys"),
        ([{"conf_threshold": 0.5}], {"type": "step"}, "not both"),
        (None, {"type": "linear", "start": 0.5, "end": 0.1, "num_passes": 2}, "schedule.type"),
        (None, {"type": "step", "start": 0.5, "end": 0.1}, "missing keys"),
    ],
)
def test_bad_schedules_name_the_field(scheduler, schedule, message):
    with pytest.raises(GDinoError, match=message):
        build_schedule(scheduler, schedule)


def test_class_thresholds_are_matched_by_sanitised_name():
    table = class_threshold_table({"Traffic Light.": 0.2}, ["person", "traffic light"], sanitize_name)
    assert table == {1: 0.2}
    with pytest.raises(GDinoError, match="'dog' is not one of the classes"):
        class_threshold_table({"dog": 0.2}, ["person"], sanitize_name)


def test_requery_asks_images_without_detections_and_skips_found_classes():
    # prompts 0, 1 -> class 0 (synonyms), prompt 2 -> class 1
    prompt_class = [0, 0, 1]
    prompts = [(0, 1, 2)] * 3
    # image 0 found class 0, image 1 found nothing, image 2 found everything
    remaining = [{1}, {0, 1}, set()]
    assert asked_prompts(prompts, prompt_class, remaining) == [(2,), (0, 1, 2), ()]
    assert asked_prompts(prompts, prompt_class, [set()] * 3) == [(), (), ()]


def test_select_pairs_uses_each_prompts_threshold_strictly():
    scores = torch.tensor([[0.9, 0.3], [0.5, 0.25], [0.1, 0.2]])
    q, c = select_pairs(scores, torch.tensor([0.5, 0.2]))
    assert sorted(zip(q.tolist(), c.tolist())) == [(0, 0), (0, 1), (1, 1)]
