"""`auto_label generate -e spec.yaml [key=value ...] [--fresh]` (also `python -m auto_label`): TAO's front door."""

from __future__ import annotations

import argparse

from auto_label.cli import run_guarded
from auto_label.images import DEFAULT_MAX_PIXELS

EPILOG = """examples:
  auto_label generate -e configs/auto_label/box2seg.yaml results_dir=out/ num_gpus=2
  auto_label generate -e configs/auto_label/text2box.yaml grounding_dino.dataset.image_dir=photos/
  auto_label generate -e configs/auto_label/text2mask.yaml
  torchrun --nnodes 2 --nproc-per-node 8 -m auto_label generate -e spec.yaml

A run that was interrupted (even killed) resumes when started again with the same command."""


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
    return parser.parse_args(argv)


def cli(argv: list[str]) -> dict | None:
    """Parse, load the spec, run; returns the report on rank 0. Heavy imports wait until the spec is valid."""
    args = parse_args(argv)
    from auto_label.spec import load_spec

    spec = load_spec(args.experiment_spec_file, args.overrides)
    from auto_label.generate import generate

    options = {"strict": args.strict, "allow_outside_image_dir": args.allow_outside_image_dir}
    return generate(spec, fresh=args.fresh, data_options={**options, "max_pixels": args.max_pixels})


def main() -> None:
    run_guarded(cli)


if __name__ == "__main__":
    main()
