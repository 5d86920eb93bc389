"""Confidence-threshold schedules for multi-pass labeling.

A schedule is a list of passes, each with a confidence threshold and an optional per-pass NMS IoU
(0 = none, TAO's meaning). It is either TAO's explicit `iteration_scheduler` list or generated from
{type: step | exponential | cosine, start, end, num_passes}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gdino.errors import GDinoError

ANNEALING_MODES = ("requery", "threshold")  # how later passes are made (GroundingDinoLabeler)


@dataclass(frozen=True)
class Pass:
    conf_threshold: float
    nms_threshold: float = 0.0


def _unit(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise GDinoError(f"{where}: must be a number in [0, 1], got {value!r}")
    return float(value)


def generate(kind: str, start: float, end: float, num_passes: int) -> list[float]:
    """Thresholds falling from `start` to `end` over `num_passes` (both ends included)."""
    if num_passes == 1:
        return [start]
    steps = range(num_passes)
    last = num_passes - 1
    if kind == "step":
        return [start + (end - start) * k / last for k in steps]
    if kind == "exponential":
        if start <= 0 or end <= 0:
            raise GDinoError("schedule: an exponential schedule needs start and end > 0")
        return [start * (end / start) ** (k / last) for k in steps]
    if kind == "cosine":
        return [end + (start - end) * 0.5 * (1 + math.cos(math.pi * k / last)) for k in steps]
    raise GDinoError(f"schedule.type: must be one of step, exponential, cosine; got {kind!r}")


def build_schedule(iteration_scheduler: Sequence[Mapping] | None, schedule: Mapping | None) -> list[Pass]:
    """Validate and expand the configured schedule; exactly one of the two forms may be given."""
    if iteration_scheduler and schedule:
        raise GDinoError("give either iteration_scheduler (a list of passes) or schedule (generated), not both")
    if schedule:
        unknown = set(schedule) - {"type", "start", "end", "num_passes", "nms_threshold"}
        if unknown:
            raise GDinoError(f"schedule: unknown keys {sorted(unknown)}")
        missing = {"type", "start", "end", "num_passes"} - set(schedule)
        if missing:
            raise GDinoError(f"schedule: missing keys {sorted(missing)}")
        num = schedule["num_passes"]
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise GDinoError(f"schedule.num_passes: must be a positive integer, got {num!r}")
        start, end = _unit(schedule["start"], "schedule.start"), _unit(schedule["end"], "schedule.end")
        nms = _unit(schedule.get("nms_threshold", 0.0), "schedule.nms_threshold")
        return [Pass(round(t, 6), nms) for t in generate(schedule["type"], start, end, num)]
    passes = iteration_scheduler or [{"conf_threshold": 0.5, "nms_threshold": 0.0}]
    out = []
    for k, step in enumerate(passes):
        where = f"iteration_scheduler[{k}]"
        if not isinstance(step, Mapping) or "conf_threshold" not in step:
            raise GDinoError(f"{where}: must be a mapping with conf_threshold (and optional nms_threshold)")
        unknown = set(step) - {"conf_threshold", "nms_threshold"}
        if unknown:
            raise GDinoError(f"{where}: unknown keys {sorted(unknown)}")
        out.append(
            Pass(
                _unit(step["conf_threshold"], f"{where}.conf_threshold"),
                _unit(step.get("nms_threshold", 0.0), f"{where}.nms_threshold"),
            )
        )
    return out


def class_threshold_table(
    class_thresholds: Mapping[str, float] | None, class_names: Sequence[str], sanitize
) -> dict[int, float]:
    """Per-class overrides keyed by class index; names are matched after the same sanitising as classes."""
    index = {sanitize(name): i for i, name in enumerate(class_names)}
    table = {}
    for name, value in (class_thresholds or {}).items():
        key = sanitize(name)
        if key not in index:
            raise GDinoError(f"class_thresholds: {name!r} is not one of the classes being labeled")
        table[index[key]] = _unit(value, f"class_thresholds[{name!r}]")
    return table


def asked_prompts(
    image_prompts: Sequence[Sequence[int]], prompt_class: Sequence[int], remaining: Sequence[set[int]]
) -> list[tuple[int, ...]]:
    """Per image, the prompts still to query: those whose class has no box yet in that image.

    An image with no detection at all keeps every prompt; an image with nothing left gets ().
    """
    return [tuple(p for p in prompts if prompt_class[p] in left) for prompts, left in zip(image_prompts, remaining)]


def select_pairs(scores, thresholds):
    """(query, prompt) index pairs whose score exceeds that prompt's threshold (TAO's strict '>')."""
    return (scores > thresholds[None, :]).nonzero(as_tuple=True)
