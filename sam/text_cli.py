"""`python -m sam label`: SAM 3 over Grounding DINO's command line (gdino.__main__.LabelCLI): the same --data.*
(image folder, class names, ontology, noun chunks, COCO file) and --model.* schedule options, --output and
--writer.* (ODVG, visualisation), with SAM 3's masks in the COCO file."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from gdino.__main__ import LabelCLI
from gdino.data import GroundingDinoDataModule
from labelkit.cli import run_predict_cli
from sam.text_module import Sam3Labeler
from sam.text_writer import MaskedCocoWriter


class Sam3LabelCLI(LabelCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--output", required=True, help="COCO JSON file to write (boxes, masks, scores)")
        parser.add_lightning_class_args(MaskedCocoWriter, "writer")
        parser.link_arguments("output", "writer.output")


def label(args: list[str]) -> LightningCLI:
    return run_predict_cli(
        Sam3LabelCLI,
        Sam3Labeler,
        GroundingDinoDataModule,
        args,
        "python -m sam label",
        "Boxes and masks of every instance of text concepts with SAM 3",
    )
