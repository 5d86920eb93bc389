"""The run report: what went in, what came out, what was skipped and why, how fast and how big.

Written as `results_dir/report.json` by every `auto_label generate` run (rank 0), and printed as a
short summary, so a labeling job can be audited and compared without re-reading its outputs.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
from importlib import metadata
from pathlib import Path

import torch

from labelkit.precision import cpu_label
from labelkit.writers import atomic_write

PACKAGES = ("auto-label", "torch", "lightning", "transformers", "timm", "omegaconf")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def peak_memory() -> dict[str, int]:
    """Peak resident memory of this process (rank 0), and peak GPU memory allocated by torch, in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    memory = {"cpu_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}
    if torch.cuda.is_available():
        memory["gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return memory


def build_report(spec, stages: list[dict], wall_time: float, processes: int, accelerator: str) -> dict:
    """Overall counts come from the last stage's file; throughput from the work done in this run."""
    first, last = stages[0], stages[-1]
    boxes = stages[0]["boxes"] if spec.get("autolabel_type") == "text2mask" else last["boxes"]
    images_this_run = first["images_this_run"]
    boxes_this_run = first["boxes_this_run"]
    return {
        "autolabel_type": spec.get("autolabel_type"),
        "spec_file": spec.source,
        "overrides": spec.overrides,
        "spec": spec.to_dict(),
        "inputs": {k: v for s in stages for k, v in s["inputs"].items()},
        "outputs": {s["name"]: s["output"] for s in stages},
        "versions": versions(),
        "processes": processes,
        "accelerator": accelerator,
        "cpu_capability": cpu_label(),  # e.g. AVX2, AVX512 + AVX512-BF16: what the speed and precision depend on
        "precision": {s["name"]: s["precision"] for s in stages},
        "counts": {
            "images": last["images"],
            "boxes": boxes,
            "masks": last.get("masks", 0),
            "skipped_images": sum(len(s["skipped"]) for s in stages),
            "resumed_items": first["resumed_items"],
        },
        "skipped": [{"stage": s["name"], **item} for s in stages for item in s["skipped"]],
        "wall_time_s": round(wall_time, 3),
        "images_this_run": images_this_run,
        "images_per_s": round(images_this_run / wall_time, 4) if wall_time > 0 else None,
        "boxes_per_s": round(boxes_this_run / wall_time, 4) if wall_time > 0 else None,
        "peak_memory": peak_memory(),
        "stages": [{k: v for k, v in s.items() if k not in ("skipped", "inputs")} for s in stages],
    }


def write_report(path: str | Path, report: dict) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")


def summary(report: dict, path: str | Path) -> str:
    counts = report["counts"]
    lines = [
        f"auto_label {report['autolabel_type']}: {counts['images']} images, {counts['boxes']} boxes, "
        f"{counts['masks']} masks ({counts['skipped_images']} images skipped, "
        f"{counts['resumed_items']} already done by an earlier run)",
        f"  {report['wall_time_s']:.1f} s on {report['processes']} {report['accelerator']} process(es): "
        f"{report['images_per_s']} images/s, {report['boxes_per_s']} boxes/s; "
        f"peak memory {report['peak_memory']['cpu_rss_bytes'] / 2**20:.0f} MiB",
        f"  CPU {report['cpu_capability']}; precision "
        + ", ".join(f"{s['name']} {s['precision']} ({s['precision_reason']})" for s in report["stages"]),
    ]
    lines += [f"  {name}: {output}" for name, output in report["outputs"].items()]
    lines += [f"  skipped {s['file_name']}: {s['reason']}" for s in report["skipped"][:10]]
    lines.append(f"  report: {path}")
    return "\n".join(lines)
