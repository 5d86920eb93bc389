"""`python -m mal fit|validate|test|predict --config ...` (Lightning CLI) and `python -m mal evaluate`."""

from __future__ import annotations

import argparse
import json
import sys

from lightning.pytorch.cli import LightningCLI

from auto_label.cli import run_guarded
from mal.data import COCOBoxDataModule
from mal.evaluate import evaluate_files, print_table
from mal.module import MALModule
from mal.writer import MaskLabelWriter


class MALCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.crop_size", "model.crop_size")
        parser.add_lightning_class_args(MaskLabelWriter, "writer")


def evaluate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mal evaluate", description="mIoU and mask AP of a predicted COCO file against ground truth"
    )
    parser.add_argument("--pred", required=True, help="predicted COCO JSON (e.g. from `mal predict`)")
    parser.add_argument("--gt", required=True, help="ground-truth COCO JSON with masks")
    parser.add_argument("--output", help="also write the metrics as JSON here")
    args = parser.parse_args(argv)
    metrics = evaluate_files(args.pred, args.gt)
    print_table(metrics, f"{args.pred} vs {args.gt}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)


def cli_main(argv: list[str] | None = None) -> MALCLI | None:
    """Run one command; `argv=None` reads the command line. Returns the CLI (trainer, model) if any."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "evaluate":
        evaluate_main(args[1:])
        return None
    return MALCLI(
        MALModule, COCOBoxDataModule, seed_everything_default=1234, args=argv, save_config_kwargs={"overwrite": True}
    )


def main() -> None:
    run_guarded(lambda argv: cli_main())


if __name__ == "__main__":
    main()
