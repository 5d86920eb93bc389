"""Command line: `python -m sam predict ...` (box -> mask) and `python -m sam label ...` (text -> masks, SAM 3).

Each is a LightningCLI run of `trainer.predict`, so every constructor argument is an option (--model.*,
--data.*, --writer.*, --trainer.*) and a YAML --config can hold them all (configs/sam/). The input file
is read and checked before any weights are; bad configuration or input ends with one error line and
exit status 2 (`--debug`: the traceback). Score the masks with `python -m mal evaluate`.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from labelkit.cli import expand_flags, run_predict_cli
from labelkit.console import run_quietly
from labelkit.precision import accelerator_device, resolve_dtype_name
from sam.data import SamBoxDataModule
from sam.module import SamBoxLabeler
from sam.writer import SamMaskWriter

USAGE = """usage: python -m sam {predict,label} ...

  predict    a mask for every box of a COCO file (SAM, SAM-HQ, SAM 2, EdgeTAM), no training
             python -m sam predict --config configs/sam/sam_vit_b.yaml --model.path models/sam-vit-base \\
                 --data.predict_ann_path boxes.json --data.predict_img_dir images/ --writer.label_dump_path masks.json
  label      boxes and masks of every instance of text concepts (SAM 3)
             python -m sam label --config configs/sam/sam3.yaml --data.image_dir photos/ \\
                 --data.class_names '[person, "yellow school bus"]' --output labels.json

Run `python -m sam predict --help` for every option; score masks with `python -m mal evaluate`."""


def resolve_model_precision(config) -> None:
    """`model.precision: auto` decided for the device of --trainer.accelerator (not Lightning's `auto` guess)."""
    model = config["model"]
    model["precision"], _ = resolve_dtype_name(model["precision"], accelerator_device(config["trainer"]["accelerator"]))


class PredictCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SamMaskWriter, "writer")

    def before_instantiate_classes(self) -> None:
        """Check the boxes file before the model is built or any weights are read."""
        resolve_model_precision(self.config)
        self.checked_data = SamBoxDataModule(**self.config["data"].as_dict())
        self.checked_data.load_annotations("predict")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule = self.checked_data  # the same settings, with the file already loaded


def predict(args: list[str]) -> LightningCLI:
    return run_predict_cli(
        PredictCLI, SamBoxLabeler, SamBoxDataModule, args, "python -m sam predict", "Masks for COCO boxes with SAM"
    )


def label(args: list[str]) -> LightningCLI:
    from sam.text_cli import label as label_text  # SAM 3's modules, loaded only when asked for

    return label_text(args)


def cli_main(argv: list[str] | None = None) -> LightningCLI | None:
    """Run one command; `argv=None` reads the command line. Returns the CLI (trainer, model, data)."""
    args = expand_flags(sys.argv[1:] if argv is None else argv)
    commands = {"predict": predict, "label": label}
    if not args or args[0] not in commands:
        wants_help = bool(args) and args[0] in ("-h", "--help")
        print(USAGE, file=sys.stdout if wants_help else sys.stderr)
        raise SystemExit(0 if wants_help else 2)
    return commands[args[0]](args[1:])


def main() -> None:
    run_quietly(cli_main)


if __name__ == "__main__":
    main()
