"""`auto_label generate -e spec.yaml [key=value ...] [--fresh]` (also `python -m auto_label`): TAO's front door;
`auto_label review --labels labels.json --images DIR`: the page on which a person checks labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from auto_label.review import DEFAULT_MAX_LABELS, find_report, write_review
from labelkit.cli import run_guarded
from labelkit.images import DEFAULT_MAX_PIXELS
from labelkit.jsonfile import read_json_object

EPILOG = """examples:
  auto_label generate -e configs/auto_label/box2seg.yaml results_dir=out/ num_gpus=2
  auto_label generate -e configs/auto_label/text2box.yaml grounding_dino.dataset.image_dir=photos/
  auto_label generate -e configs/auto_label/text2mask.yaml
  torchrun --nnodes 2 --nproc-per-node 8 -m auto_label generate -e spec.yaml

A run that was interrupted (even killed) resumes when started again with the same command.
Each run also writes results_dir/review/index.html (see `auto_label review`)."""

REVIEW_EPILOG = """examples:
  auto_label review --labels out/labels.json --images photos/
  auto_label review --labels out/mal/labels.json --images photos/ --gt photos/instances.json --out review/

The page opens from disk in any browser (no server); its folder can be copied or archived whole."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="auto_label",
        description="Auto-label images from a TAO auto-label spec",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate",
        help="label images as the spec says (mal, grounding_dino or text2mask)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument("-e", "--experiment_spec_file", required=True, help="the spec YAML")
    generate.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. results_dir=out/")
    generate.add_argument("--fresh", action="store_true", help="discard an interrupted run's results, start over")
    generate.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image instead of skipping and listing it"
    )
    generate.add_argument(
        "--allow-outside-image-dir",
        action="store_true",
        help="accept image file names (and links) that lead outside the image folder",
    )
    generate.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"skip images with more pixels than this (decompression bombs; default {DEFAULT_MAX_PIXELS})",
    )
    generate.add_argument(
        "--verbose", action="store_true", help="also show Lightning's notes and tips and the libraries' warnings"
    )
    add_review_parser(commands)
    return parser.parse_args(argv)


def add_review_parser(commands) -> None:
    review = commands.add_parser(
        "review",
        help="write a static HTML page to check labels: run summary, classes, score histograms, "
        "gallery of the labels most likely wrong",
        epilog=REVIEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    review.add_argument("--labels", required=True, help="a labels COCO file (MAL, SAM, Grounding DINO, text2mask)")
    review.add_argument("--images", required=True, help="the folder the labels' file names are relative to")
    review.add_argument("--gt", help="a ground-truth COCO file: sort by each label's IoU with it")
    review.add_argument("--out", help="the folder to write (default: review/ beside the labels)")
    review.add_argument(
        "--report",
        help="the run's report.json, for speed and memory (default: the one beside the labels or a folder up "
        "that names them)",
    )
    review.add_argument(
        "--max-labels",
        type=int,
        default=DEFAULT_MAX_LABELS,
        help=f"gallery size: this many labels, most likely wrong first (default {DEFAULT_MAX_LABELS})",
    )
    review.add_argument(
        "--allow-outside-image-dir",
        action="store_true",
        help="accept image file names (and links) that lead outside the image folder, as the run did",
    )


def review(args: argparse.Namespace) -> None:
    """Write the review page of a labels file and say where it is."""
    if args.max_labels < 1:
        raise ValueError(f"--max-labels: {args.max_labels}: the gallery holds at least one label")
    labels = Path(args.labels)
    report = read_json_object(args.report, ValueError, "a run report") if args.report else find_report(labels)
    out = Path(args.out) if args.out else labels.parent / "review"
    page = write_review(
        labels,
        args.images,
        out,
        report=report,
        gt_path=args.gt,
        max_labels=args.max_labels,
        allow_outside_image_dir=args.allow_outside_image_dir,
    )
    print(f"review: {page.resolve()}")


def cli(argv: list[str]) -> dict | None:
    """Parse, load the spec, run; returns the report on rank 0 (`review`: None). Heavy imports (Lightning,
    the models) wait until the spec is valid."""
    args = parse_args(argv)
    if args.command == "review":
        return review(args)
    from auto_label.spec import load_spec

    spec = load_spec(args.experiment_spec_file, args.overrides)
    from labelkit.console import configure_console  # imports Lightning: after the spec is found valid

    configure_console(args.verbose)
    from auto_label.generate import generate

    options = {"strict": args.strict, "allow_outside_image_dir": args.allow_outside_image_dir}
    return generate(spec, fresh=args.fresh, data_options={**options, "max_pixels": args.max_pixels})


def main() -> None:
    run_guarded(cli)


if __name__ == "__main__":
    main()
