"""MAL quality on real data: fit on the boxes of ../shared/data/coco128 (no mask is read for training),
from a randomly initialised backbone, within a time budget; predict every box; compare with the real
masks and with the box-fill baseline. Prints a Markdown row for BENCHMARKS.md and writes JSON, both with
the optimizer steps the fit reached in its budget, the CPU capability and the precision `auto` chose (bf16
on a CPU with AVX512-BF16 / AMX, fp32 on AVX2; `--trainer.precision=...` overrides).

    python benchmarks/mal_coco128.py [--minutes 30] [--out results/bench/mal_coco128] [key=value overrides]

The default configs are configs/mal/coco128_cpu.yaml (every knob, the original MAL's settings) and on top of
it configs/mal/scratch_cpu.yaml (the from-scratch recipe); `--config FILE` (repeatable) replaces the pair.
With `--self_training FILE` (default configs/mal/scratch_selftrain_cpu.yaml; `--self_training none` skips it)
the fit is two rounds within the one budget: the first model labels the training boxes, and a second fit
starts from it and also learns from those masks (the config on top of the others says how). Repeat the option
for more rounds, each starting from the one before and learning from its labels, with its own FILE. The
overrides apply to every round and to labelling; a setting for one round alone goes into a copy of its FILE.
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
DEFAULT_SELF_TRAINING = "scratch_selftrain_cpu.yaml"


def cli_overrides(items: list[str]) -> list[str]:
    """`key=value` and `--key=value` (or `--key value`) settings as Lightning CLI arguments (`--key=value`)."""
    return [f"--{item}" if "=" in item and not item.startswith("-") else item for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--minutes",
        type=float,
        default=30.0,
        help="wall-clock budget of the fit (both rounds, labelling between)",
    )
    parser.add_argument("--config", action="append", help="a Lightning CLI config (repeat to layer several)")
    parser.add_argument(
        "--self_training", action="append", help="config of a self-training round (repeat for more; none: no round)"
    )
    parser.add_argument("--out", default="results/bench/mal_coco128")
    parser.add_argument(
        "overrides", nargs="*", help="Lightning CLI settings: key=value or --key=value, e.g. trainer.max_steps=450"
    )
    args, unknown = parser.parse_known_args()
    args.overrides = cli_overrides([*args.overrides, *unknown])
    args.config = args.config or [str(REPO / "configs" / "mal" / name) for name in DEFAULT_CONFIGS]
    args.self_training = args.self_training or [str(REPO / "configs" / "mal" / DEFAULT_SELF_TRAINING)]
    self_training = [path for path in args.self_training if path.lower() != "none"]
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
    budget = args.minutes * 60
    start = time.time()

    def fit(*extra: str):
        """One fit within what is left of the budget. No validation: the masks must not steer training."""
        left = max(int(budget - (time.time() - start)), 1)
        limit = f"--trainer.max_time=00:00:{left // 60:02d}:{left % 60:02d}"
        return cli_main(["fit", *common, *extra, "--trainer.limit_val_batches=0", limit, *args.overrides])

    def predict(checkpoint: str, labels: Path, *extra: str) -> None:
        cli_main(
            [
                "predict",
                *common,
                *extra,
                f"--ckpt_path={checkpoint}",
                f"--writer.label_dump_path={labels}",
                *args.overrides,
            ]
        )

    def summary(cli) -> dict:
        epochs, steps, max_epochs = cli.trainer.current_epoch, cli.trainer.global_step, cli.trainer.max_epochs
        stopped_by = "the time budget" if epochs < max_epochs else f"max_epochs {max_epochs}"
        return {"steps": steps, "epochs": epochs, "stopped_by": stopped_by}

    cli = fit()
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    rounds = [summary(cli)]
    for config in self_training:
        round_labels = out / f"round{len(rounds)}_labels.json"
        predict(
            checkpoint, round_labels, f"--data.predict_ann_path={ann}", f"--data.predict_img_dir={COCO128 / 'images'}"
        )
        extra = [f"--config={config}", f"--data.train_ann_path={round_labels}"]
        cli = fit(*extra, f"--model.pretrained_path={checkpoint}")
        checkpoint = cli.trainer.checkpoint_callback.last_model_path
        rounds.append(summary(cli))
    fit_seconds = time.time() - start
    conditions = {
        "cpu_capability": cpu_label(),
        "precision": cli.trainer.precision,
        "precision_reason": cli.trainer.precision_reason,
    }
    steps = " + ".join(str(r["steps"]) for r in rounds)
    print(
        f"fit: {steps} optimizer steps in {fit_seconds / 60:.1f} min, rounds ended by",
        [r["stopped_by"] for r in rounds],
    )

    labels = out / "labels.json"
    labelling_start = time.time()
    predict(checkpoint, labels)
    predict_seconds = time.time() - labelling_start
    box_fill = out / "box_fill.json"
    write_box_fill(str(ann), str(box_fill))
    mal, boxes = evaluate_files(str(labels), str(ann)), evaluate_files(str(box_fill), str(ann))
    print_table(mal, "MAL vs real masks")
    print_table(boxes, "box-fill vs real masks")
    result = {
        "mal": mal,
        "box_fill": boxes,
        "fit_seconds": fit_seconds,
        "rounds": rounds,
        "budget_minutes": args.minutes,
        **conditions,
        "predict_seconds": predict_seconds,
        "checkpoint": checkpoint,
        "configs": args.config,
        "self_training": self_training,
        "overrides": args.overrides,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    configs = " + ".join(Path(path).name for path in args.config)
    if self_training:
        configs += ", self-training " + " + ".join(Path(path).name for path in self_training)
    print(
        f"| MAL (ours, {configs}, {fit_seconds / 60:.1f} min fit of a {args.minutes:g} min budget: "
        f"{steps} steps; {conditions['precision']}, CPU {conditions['cpu_capability']}) "
        f"| {mal['mIoU']:.3f} | {mal['mIoU_class']:.3f} | {mal['mask_AP']:.3f} |"
    )
    print(f"| box-fill baseline | {boxes['mIoU']:.3f} | {boxes['mIoU_class']:.3f} | {boxes['mask_AP']:.3f} |")


if __name__ == "__main__":
    main()
