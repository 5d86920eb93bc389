"""Command line: `python -m gdino label ...` (Lightning predict) and `python -m gdino evaluate ...`.

`label` is a LightningCLI over GroundingDinoLabeler + GroundingDinoDataModule + CocoPredictionWriter,
so every constructor argument is an option (--model.*, --data.*, --writer.*, --trainer.*) and a YAML
--config can hold them all. Bad configuration or input ends with one error line and exit status 2; Ctrl-C
with 130 and SIGTERM with 143, the finished images kept (the same command resumes).
"""

from __future__ import annotations

import sys
import warnings

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningCLI

from gdino.data import GroundingDinoDataModule
from gdino.evaluate import evaluate, format_report, write_metrics
from gdino.module import GroundingDinoLabeler
from gdino.writer import CocoPredictionWriter
from labelkit.cli import configure_logging, expand_flags, pop_debug, run_predict_cli, run_stoppable
from labelkit.console import configure_console, pop_verbose
from labelkit.precision import accelerator_device, resolve_dtype_name

USAGE = """usage: python -m gdino {label,evaluate} ...

  label      detect boxes for text prompts and write a COCO file
             python -m gdino label --config configs/gdino/tiny.yaml --data.image_dir photos/ \\
                 --data.class_names '[person, car, "traffic light"]' --output labels.json
  evaluate   COCO box AP/AR of labels against ground truth, per class
             python -m gdino evaluate --pred labels.json --gt gt.json

Run `python -m gdino label --help` for every option."""


class LabelCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--output", required=True, help="COCO JSON file to write")
        parser.add_lightning_class_args(CocoPredictionWriter, "writer")
        parser.link_arguments("output", "writer.output")

    def before_instantiate_classes(self) -> None:
        """Build the data first, so that a bad input file or folder stops the run before weights are read; then
        decide `model.precision: auto` for the device of --trainer.accelerator.

        The instance is then handed to the CLI's own instantiation instead of a second one.
        """
        data = GroundingDinoDataModule(**self.config["data"])
        model = self.config["model"]
        device = accelerator_device(self.config["trainer"]["accelerator"])
        model["precision"], _ = resolve_dtype_name(model["precision"], device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # add_instantiator is deprecated in jsonargparse, still used here
            self.parser.add_instantiator(
                lambda *args, **kwargs: data, GroundingDinoDataModule, subclasses=False, prepend=True
            )


def label(args: list[str]) -> None:
    """`args` are the command line minus "label"."""
    run_predict_cli(
        LabelCLI,
        GroundingDinoLabeler,
        GroundingDinoDataModule,
        args,
        "python -m gdino label",
        "Label images with Grounding DINO",
        devices=1,
    )


def evaluate_command(args: list[str]) -> None:
    parser = ArgumentParser(prog="python -m gdino evaluate", description=evaluate.__doc__)
    parser.add_argument("--pred", required=True, help="labels COCO file (written by `label`)")
    parser.add_argument("--gt", required=True, help="ground-truth COCO file")
    parser.add_argument("--output", default=None, help="also write the metrics as JSON here")
    cfg = parser.parse_args(args)
    metrics = evaluate(cfg.pred, cfg.gt)
    print(format_report(metrics))
    if cfg.output:
        write_metrics(metrics, cfg.output)
    if "nothing_to_score" in metrics:  # a number over nothing would read as a result: exit 2
        raise ValueError(f"nothing to score: {metrics['nothing_to_score']}")


def main(argv: list[str] | None = None) -> int:
    """Run a command and return its exit status: bad input or configuration gives one error line and 2
    (`--debug`: the traceback); Ctrl-C 130 and SIGTERM 143, the finished images kept for a resume."""
    argv, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    argv, verbose = pop_verbose(argv)
    configure_logging()
    configure_console(verbose)
    argv = expand_flags(argv)
    commands = {"label": label, "evaluate": evaluate_command}
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # GDinoError, CocoFormatError, CheckpointError, unwritable results, ... are bad input
    return run_stoppable(commands[argv[0]], argv[1:], debug, f"gdino {argv[0]}: error")


if __name__ == "__main__":
    sys.exit(main())
