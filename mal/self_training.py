"""The from-scratch recipe as one command: fit on a dataset's boxes, label them, fit again from that model on
its own labels (one self-training round per `--self_training` config), and label the boxes; every fit within
one time budget.

    python -m mal selftrain --ann boxes.json --images images/ [--out runs/selftrain] [--minutes 30]
        [--config FILE ...] [--self_training FILE ... | --self_training none] [key=value | --key=value ...]

The configs default to configs/mal/coco128_cpu.yaml + configs/mal/scratch_cpu.yaml (`--config`, repeatable,
replaces the pair), the rounds to two of configs/mal/scratch_selftrain_cpu.yaml (`--self_training none`: no
round; a round's config also applies to labelling the boxes it learns from). The `key=value` settings
(Lightning CLI keys, e.g. `trainer.max_epochs=9`) apply to every fit and every labelling; a setting for one
round alone goes into that round's config. Writes OUT/labels.json (every box of --ann, its mask and
mal_score), OUT/round<k>_labels.json (the k-th model's labels, which the next fit learns from), the fits'
checkpoints and CSV logs under OUT/fit and a summary in OUT/self_training.json. No mask of --ann is read, and
no validation steers the fits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from labelkit.cli import configure_logging
from labelkit.precision import cpu_label
from mal.__main__ import cli_main

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mal"
DEFAULT_CONFIGS = ("coco128_cpu.yaml", "scratch_cpu.yaml")
DEFAULT_ROUNDS = ("scratch_selftrain_cpu.yaml", "scratch_selftrain_cpu.yaml")


def cli_overrides(items: list[str]) -> list[str]:
    """`key=value`, `--key=value` and `--key value` settings, in their order, as Lightning CLI arguments: a bare
    `key=value` becomes `--key=value` unless it is the value of the `--key` before it."""
    out = []
    for item in items:
        is_value = bool(out) and out[-1].startswith("--") and "=" not in out[-1]
        out.append(f"--{item}" if "=" in item and not item.startswith("-") and not is_value else item)
    return out


def self_train(
    ann: Path,
    images: Path,
    out: Path,
    configs: list[str],
    rounds: list[str],
    minutes: float = 30.0,
    overrides: tuple[str, ...] = (),
) -> dict:
    """Fit, then per config in `rounds`: label the training boxes and fit again from the last model on those
    labels, both with that config on top of `configs` (its prediction settings shape the masks the round
    learns from); then label the boxes with the last model under `configs` alone. The fits share a wall-clock
    budget of `minutes` (Lightning's max_time: a fit stops when it is spent); the last labelling is outside it.

    Returns {"labels", "checkpoint", "rounds": [{steps, epochs, stopped_by}], "fit_seconds",
    "predict_seconds", "cpu_capability", "precision", "precision_reason"} and writes it to
    out/self_training.json.
    """
    out.mkdir(parents=True, exist_ok=True)
    loggers = (
        f'--trainer.logger=[{{"class_path": "lightning.pytorch.loggers.CSVLogger", '
        f'"init_args": {{"save_dir": "{out}", "name": "fit"}}}}]'
    )
    data = [
        f"--data.{split}_{key}={path}"
        for split in ("train", "val")
        for key, path in (("ann_path", ann), ("img_dir", images))
    ]
    common = [*(f"--config={path}" for path in configs), loggers, f"--trainer.default_root_dir={out}", *data]
    budget, start = minutes * 60, time.time()

    def fit(*extra: str):
        left = max(int(budget - (time.time() - start)), 1)
        limit = f"--trainer.max_time={left // 86400:02d}:{left // 3600 % 24:02d}:{left // 60 % 60:02d}:{left % 60:02d}"
        return cli_main(["fit", *common, *extra, "--trainer.limit_val_batches=0", limit, *overrides])

    def label(checkpoint: str, labels: Path, *extra: str) -> None:
        cli_main(
            [
                "predict",
                *common,
                *extra,
                f"--data.predict_ann_path={ann}",
                f"--data.predict_img_dir={images}",
                f"--ckpt_path={checkpoint}",
                f"--writer.label_dump_path={labels}",
                *overrides,
            ]
        )

    def summary(cli) -> dict:
        epochs, steps, max_epochs = cli.trainer.current_epoch, cli.trainer.global_step, cli.trainer.max_epochs
        stopped_by = "the time budget" if epochs < max_epochs else f"max_epochs {max_epochs}"
        return {"steps": steps, "epochs": epochs, "stopped_by": stopped_by}

    cli = fit()
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    done = [summary(cli)]
    for config in rounds:
        round_labels = out / f"round{len(done)}_labels.json"
        label(checkpoint, round_labels, f"--config={config}")  # the round's config makes its targets too
        cli = fit(
            f"--config={config}", f"--data.train_ann_path={round_labels}", f"--model.pretrained_path={checkpoint}"
        )
        checkpoint = cli.trainer.checkpoint_callback.last_model_path
        done.append(summary(cli))
    fit_seconds = time.time() - start
    labels = out / "labels.json"
    label(checkpoint, labels)
    result = {
        "labels": str(labels),
        "checkpoint": checkpoint,
        "rounds": done,
        "fit_seconds": fit_seconds,
        "predict_seconds": time.time() - start - fit_seconds,
        "cpu_capability": cpu_label(),
        "precision": cli.trainer.precision,
        "precision_reason": cli.trainer.precision_reason,
    }
    (out / "self_training.json").write_text(json.dumps(result, indent=2))
    return result


def argument_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options of `python -m mal selftrain` (and of benchmarks/mal_coco128.py, which adds its own)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of all the fits together")
    parser.add_argument("--config", action="append", help="a Lightning CLI config (repeat to layer several)")
    parser.add_argument(
        "--self_training", action="append", help="config of a self-training round (repeat for more; none: no round)"
    )
    parser.add_argument("--out", default=out, help="folder for the labels, checkpoints and logs")
    parser.epilog = "Any other argument is a Lightning CLI setting: key=value, --key=value or --key value."
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, filling the default configs and rounds; `--key=value` settings the parser does not know are
    overrides as well."""
    args, unknown = parser.parse_known_args(argv)
    args.overrides = cli_overrides(unknown)
    args.config = args.config or [str(CONFIG_DIR / name) for name in DEFAULT_CONFIGS]
    rounds = args.self_training or [str(CONFIG_DIR / name) for name in DEFAULT_ROUNDS]
    args.self_training = [path for path in rounds if path.lower() != "none"]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__, "runs/selftrain")
    parser.prog = "python -m mal selftrain"
    parser.add_argument("--ann", required=True, help="COCO JSON with the boxes to learn from and label")
    parser.add_argument("--images", required=True, help="folder of its images")
    args = parse(parser, argv)
    configure_logging()
    result = self_train(
        Path(args.ann),
        Path(args.images),
        Path(args.out).resolve(),
        args.config,
        args.self_training,
        args.minutes,
        tuple(args.overrides),
    )
    steps = " + ".join(str(r["steps"]) for r in result["rounds"])
    print(f"{steps} optimizer steps in {result['fit_seconds'] / 60:.1f} min; labels: {result['labels']}")
