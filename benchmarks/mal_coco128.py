"""MAL quality on real data: fit on the boxes of ../shared/data/coco128 (no mask is read for training),
from a randomly initialised backbone, within a time budget; predict every box; compare with the real
masks and with the box-fill baseline. Prints a Markdown row for BENCHMARKS.md and writes JSON, both with
the optimizer steps the fit reached in its budget, the CPU capability and the precision `auto` chose (bf16
on a CPU with AVX512-BF16 / AMX, fp32 on AVX2; `--trainer.precision=...` overrides).

    python benchmarks/mal_coco128.py [--minutes 30] [--out results/bench/mal_coco128] [key=value overrides]

The default configs are configs/mal/coco128_cpu.yaml (every knob, the original MAL's settings) and on top of
it configs/mal/scratch_cpu.yaml (the from-scratch recipe); `--config FILE` (repeatable) replaces the pair.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from labelkit.cli import configure_logging
from labelkit.precision import cpu_label
from mal.__main__ import cli_main
from mal.evaluate import evaluate_files, print_table, write_box_fill

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"
DEFAULT_CONFIGS = ("coco128_cpu.yaml", "scratch_cpu.yaml")


def cli_overrides(items: list[str]) -> list[str]:
    """`key=value` and `--key=value` (or `--key value`) settings as Lightning CLI arguments (`--key=value`)."""
    return [f"--{item}" if "=" in item and not item.startswith("-") else item for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of the fit")
    parser.add_argument("--config", action="append", help="a Lightning CLI config (repeat to layer several)")
    parser.add_argument("--out", default="results/bench/mal_coco128")
    parser.add_argument(
        "overrides", nargs="*", help="Lightning CLI settings: key=value or --key=value, e.g. trainer.max_steps=450"
    )
    args, unknown = parser.parse_known_args()
    args.overrides = cli_overrides([*args.overrides, *unknown])
    args.config = args.config or [str(REPO / "configs" / "mal" / name) for name in DEFAULT_CONFIGS]
    configure_logging()
    ann = COCO128 / "annotations" / "instances.json"
    if not ann.is_file():
        raise SystemExit(f"{ann} not found: this benchmark needs ../shared/data/coco128 beside the repository")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    loggers = (
        f'--trainer.logger=[{{"class_path": "lightning.pytorch.loggers.CSVLogger", '
        f'"init_args": {{"save_dir": "{out}", "name": "fit"}}}}]'
    )
    common = [
        *(f"--config={path}" for path in args.config),
        loggers,
        f"--trainer.default_root_dir={out}",
        "--data.train_ann_path",
        str(ann),
        "--data.train_img_dir",
        str(COCO128 / "images"),
        "--data.val_ann_path",
        str(ann),
        "--data.val_img_dir",
        str(COCO128 / "images"),
    ]
    budget = int(args.minutes * 60)
    start = time.time()
    # No validation during the fit: the masks must not steer training or checkpoint choice.
    cli = cli_main(
        [
            "fit",
            *common,
            "--trainer.limit_val_batches=0",
            f"--trainer.max_time=00:00:{budget // 60:02d}:{budget % 60:02d}",
            *args.overrides,
        ]
    )
    fit_seconds = time.time() - start
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    epochs, steps = cli.trainer.current_epoch, cli.trainer.global_step
    stopped_by = "the time budget" if epochs < cli.trainer.max_epochs else f"max_epochs {cli.trainer.max_epochs}"
    conditions = {
        "cpu_capability": cpu_label(),
        "precision": cli.trainer.precision,
        "precision_reason": cli.trainer.precision_reason,
    }
    print(f"fit: {steps} optimizer steps, {epochs} epochs in {fit_seconds / 60:.1f} min, ended by {stopped_by}")

    labels = out / "labels.json"
    start = time.time()
    cli_main(["predict", *common, "--ckpt_path", checkpoint, "--writer.label_dump_path", str(labels), *args.overrides])
    predict_seconds = time.time() - start
    box_fill = out / "box_fill.json"
    write_box_fill(str(ann), str(box_fill))
    mal, boxes = evaluate_files(str(labels), str(ann)), evaluate_files(str(box_fill), str(ann))
    print_table(mal, "MAL vs real masks")
    print_table(boxes, "box-fill vs real masks")
    result = {
        "mal": mal,
        "box_fill": boxes,
        "fit_seconds": fit_seconds,
        "epochs": epochs,
        "steps": steps,
        "budget_minutes": args.minutes,
        "stopped_by": stopped_by,
        **conditions,
        "predict_seconds": predict_seconds,
        "checkpoint": checkpoint,
        "configs": args.config,
        "overrides": args.overrides,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    configs = " + ".join(Path(path).name for path in args.config)
    print(
        f"| MAL (ours, {configs}, {fit_seconds / 60:.1f} min fit of a {args.minutes:g} min budget: "
        f"{steps} steps, {epochs} epochs; {conditions['precision']}, CPU {conditions['cpu_capability']}) "
        f"| {mal['mIoU']:.3f} | {mal['mIoU_class']:.3f} | {mal['mask_AP']:.3f} |"
    )
    print(f"| box-fill baseline | {boxes['mIoU']:.3f} | {boxes['mIoU_class']:.3f} | {boxes['mask_AP']:.3f} |")


if __name__ == "__main__":
    main()
