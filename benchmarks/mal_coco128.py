"""MAL quality on real data: fit on the boxes of ../shared/data/coco128 (no mask is read for training),
from a randomly initialised backbone, within a time budget; predict every box; compare with the real
masks and with the box-fill baseline. Prints a Markdown row for BENCHMARKS.md and writes JSON, both with
the optimizer steps the fit reached in its budget, the CPU capability and the precision `auto` chose (bf16
on a CPU with AVX512-BF16 / AMX, fp32 on AVX2; `--trainer.precision=...` overrides).

    python benchmarks/mal_coco128.py [--minutes 30] [--out results/bench/mal_coco128] [key=value overrides]

The fit is `mal.self_training.self_train` (`python -m mal selftrain` on any dataset), with its options:
configs/mal/coco128_cpu.yaml (every knob, the original MAL's settings) and on top of it
configs/mal/scratch_cpu.yaml (the from-scratch recipe), `--config FILE` (repeatable) replacing the pair; then
the self-training rounds of `--self_training FILE` (repeatable; default two of scratch_selftrain_cpu.yaml,
`none`: no round), each starting from the model before and learning from its labels of the training boxes, all
within the one budget. The overrides apply to every round and to labelling.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from labelkit.cli import configure_logging
from mal.evaluate import evaluate_files, print_table, write_box_fill
from mal.self_training import argument_parser, parse, self_train

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"


def main() -> None:
    args = parse(argument_parser(__doc__, "results/bench/mal_coco128"), None)
    configure_logging()
    ann = COCO128 / "annotations" / "instances.json"
    if not ann.is_file():
        raise SystemExit(f"{ann} not found: this benchmark needs ../shared/data/coco128 beside the repository")
    out = Path(args.out).resolve()
    run = self_train(ann, COCO128 / "images", out, args.config, args.self_training, args.minutes, tuple(args.overrides))
    rounds = run["rounds"]
    steps = " + ".join(str(r["steps"]) for r in rounds)
    print(
        f"fit: {steps} optimizer steps in {run['fit_seconds'] / 60:.1f} min, rounds ended by",
        [r["stopped_by"] for r in rounds],
    )
    box_fill = out / "box_fill.json"
    write_box_fill(str(ann), str(box_fill))
    mal, boxes = evaluate_files(run["labels"], str(ann)), evaluate_files(str(box_fill), str(ann))
    print_table(mal, "MAL vs real masks")
    print_table(boxes, "box-fill vs real masks")
    result = {
        "mal": mal,
        "box_fill": boxes,
        **run,
        "budget_minutes": args.minutes,
        "configs": args.config,
        "self_training": args.self_training,
        "overrides": args.overrides,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    configs = " + ".join(Path(path).name for path in args.config)
    if args.self_training:
        configs += ", self-training " + " + ".join(Path(path).name for path in args.self_training)
    print(
        f"| MAL (ours, {configs}, {run['fit_seconds'] / 60:.1f} min fit of a {args.minutes:g} min budget: "
        f"{steps} steps; {run['precision']}, CPU {run['cpu_capability']}) "
        f"| {mal['mIoU']:.3f} | {mal['mIoU_class']:.3f} | {mal['mask_AP']:.3f} |"
    )
    print(f"| box-fill baseline | {boxes['mIoU']:.3f} | {boxes['mIoU_class']:.3f} | {boxes['mask_AP']:.3f} |")


if __name__ == "__main__":
    main()
