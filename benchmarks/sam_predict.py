"""`sam predict` throughput: images/s and boxes/s of the Segment Anything box -> mask labelers on coco128's boxes,
beside a naive loop that runs the whole model (image encoder included) once per box, and `sam label` (SAM 3)
images/s for a few classes.

    python benchmarks/sam_predict.py [--size tiny|released] [--families sam sam_hq sam2 edgetam sam3]
        [--num-images 128] [--naive-images 8] [--precision auto] [--out results/bench/sam_predict]

Models have random weights (speed does not depend on them), saved as Hugging Face directories and loaded
through the real path. `--size tiny`: the test models of sam.tiny (64-pixel input; measures our overhead
only). `--size released`: the architectures of the released checkpoints at their input size (SAM ViT-B and
SAM-HQ ViT-B at 1024, SAM 2.1 Hiera-T at 1024, EdgeTAM's RepViT-M1 at 1024, SAM 3 at 1008). Our path is
Lightning's `trainer.predict` over SamBoxDataModule / GroundingDinoDataModule with the real writers, in the
precision `auto` chooses (bf16 on a GPU with bf16). Data: ../shared/data/coco128 (its boxes; the script stops
with a message when it is absent). Prints a Markdown table for BENCHMARKS.md and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from transformers import (
    EdgeTamConfig,
    Sam2Config,
    Sam3Config,
    SamConfig,
    SamHQConfig,
    TimmWrapperConfig,
)

from gdino.data import GroundingDinoDataModule
from labelkit.cli import LABELLING_TRAINER
from labelkit.images import decode_image
from labelkit.precision import cpu_label
from mal.crops import xywh_to_xyxy
from sam.stage import sam_stage
from sam.text_module import Sam3Labeler
from sam.text_writer import MaskedCocoWriter
from sam.tiny import IMAGE_SIZE, save_random, tiny_config, tiny_processor

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"  # --coco128 elsewhere
FAMILIES = ("sam", "sam_hq", "sam2", "edgetam", "sam3")
RELEASED = {  # family -> (architecture name, config of the released checkpoint, input side)
    "sam": ("SAM ViT-B", SamConfig, 1024),
    "sam_hq": ("SAM-HQ ViT-B", SamHQConfig, 1024),
    "sam2": ("SAM 2.1 Hiera-T", Sam2Config, 1024),
    "edgetam": (
        "EdgeTAM RepViT-M1",
        lambda: EdgeTamConfig(
            vision_config={
                "backbone_config": TimmWrapperConfig(
                    architecture="repvit_m1",
                    model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]},
                )
            }
        ),
        1024,
    ),
    "sam3": ("SAM 3", Sam3Config, 1008),
}
LABEL_CLASSES = ["person", "car", "dog", "chair", "bottle"]


class LoopTimer(L.Callback):
    """Wall time of the predict loop (after the writers' own start, until their last batch is written)."""

    def on_predict_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_predict_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def model_dir(root: Path, family: str, size: str) -> tuple[Path, str]:
    """A random model of `family` at `size` saved under `root`; (its directory, its description)."""
    if size == "tiny":
        config, side, name = tiny_config(family), IMAGE_SIZE, f"tiny {family}"
    else:
        name, make_config, side = RELEASED[family]
        config = make_config()
    return save_random(root / f"{family}_{size}", config, tiny_processor(family, side)), f"{name} at {side}"


def coco128_subset(coco128: Path, out: Path, num_images: int) -> Path:
    data = json.loads((coco128 / "annotations" / "instances.json").read_text())
    images = data["images"][:num_images]
    ids = {im["id"] for im in images}
    annotations = [a for a in data["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
    out.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    return out


def trainer(callbacks: list) -> L.Trainer:
    return L.Trainer(accelerator="auto", devices=1, callbacks=callbacks, enable_progress_bar=False, **LABELLING_TRAINER)


def run_predict(path: Path, boxes: Path, out: Path, args) -> dict:
    stage = sam_stage(
        str(path),
        boxes,
        args.coco128 / "images",
        out,
        fresh=True,
        batch_size=args.batch_size,
        num_workers=args.workers,
        precision=args.precision,
        multimask=args.multimask,
    )
    timer = LoopTimer()
    trainer([stage.writer, timer]).predict(stage.module, datamodule=stage.data, return_predictions=False)
    summary = stage.writer.summary
    return {
        "precision": stage.module.precision_name,
        "images": summary["images"],
        "boxes": summary["boxes"],
        "loop_s": round(timer.seconds, 3),
        "images_per_s": round(summary["images"] / timer.seconds, 3),
        "boxes_per_s": round(summary["boxes"] / timer.seconds, 3),
        "module": stage.module,
    }


@torch.no_grad()
def naive_boxes_per_s(module, boxes: Path, images: Path, num_images: int) -> float:
    """transformers' plain loop with one box per forward: image encoder, prompt encoder and decoder every time."""
    module.to("cuda" if torch.cuda.is_available() else "cpu")  # Lightning moved it back to the CPU after predict
    segmenter = module.segmenter
    data = json.loads(boxes.read_text())
    by_image = {im["id"]: im for im in data["images"][:num_images]}
    count, start = 0, time.perf_counter()
    for image_id, image_info in by_image.items():
        image = decode_image(images / image_info["file_name"])
        for ann in (a for a in data["annotations"] if a["image_id"] == image_id):
            inputs = segmenter.image_processor(images=image, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(module.device, segmenter.dtype)
            resized = [int(v) for v in inputs.get("reshaped_input_sizes", [pixel_values.shape[-2:]])[0]]
            scale = torch.tensor([resized[1] / image.shape[1], resized[0] / image.shape[0]] * 2)
            box = (torch.tensor(xywh_to_xyxy(ann["bbox"])) * scale).to(module.device)
            embeddings = segmenter.embed(pixel_values)
            logits, _ = segmenter.decode(embeddings, box[None], True)
            segmenter.upscale(logits[:, 0], image.shape[:2], resized)
            count += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def run_label(path: Path, out: Path, num_images: int, args) -> dict:
    images = path.parent / "label_images"
    images.mkdir(exist_ok=True)
    for image in sorted((args.coco128 / "images").glob("*.jpg"))[:num_images]:
        shutil.copy(image, images)
    data = GroundingDinoDataModule(image_dir=str(images), class_names=LABEL_CLASSES, num_workers=args.workers)
    labeler = Sam3Labeler(str(path), precision=args.precision, iteration_scheduler=[{"conf_threshold": 0.3}])
    writer, timer = MaskedCocoWriter(str(out), fresh=True), LoopTimer()
    trainer([writer, timer]).predict(labeler, datamodule=data, return_predictions=False)
    images_done = writer.summary["images"]
    return {
        "precision": labeler.precision_name,
        "images": images_done,
        "classes": len(LABEL_CLASSES),
        "loop_s": round(timer.seconds, 3),
        "images_per_s": round(images_done / timer.seconds, 3),
    }


def markdown(results: dict) -> str:
    lines = [
        f"Device: {results['device']}; CPU {results['cpu_capability']}; torch {torch.__version__}",
        "",
        "| model | precision | images | boxes | images/s | boxes/s | naive boxes/s (a forward per box) "
        "| images/s of the first run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["family"] == "sam3":
            lines.append(
                f"| {row['model']} (`sam label`, {row['classes']} classes) | {row['precision']} | {row['images']} "
                f"| - | {row['images_per_s']} | - | - | {row['first_run_images_per_s']} |"
            )
        else:
            lines.append(
                f"| {row['model']} | {row['precision']} | {row['images']} | {row['boxes']} | {row['images_per_s']} "
                f"| {row['boxes_per_s']} | {row.get('naive_boxes_per_s', '-')} | {row['first_run_images_per_s']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "released"), default="tiny")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--num-images", type=int, default=128, help="coco128 images whose boxes get masks")
    parser.add_argument("--naive-images", type=int, default=8, help="images of the one-forward-per-box loop (0: none)")
    parser.add_argument("--label-images", type=int, default=32, help="images SAM 3 labels")
    parser.add_argument("--batch-size", type=int, default=4, help="images per predict step")
    parser.add_argument("--runs", type=int, default=2, help="runs of each model; the table gives the last")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--multimask", default="best", choices=("best", "first", "single"))
    parser.add_argument("--coco128", type=Path, default=COCO128, help="the coco128 folder (images/, annotations/)")
    parser.add_argument("--out", default="results/bench/sam_predict")
    args = parser.parse_args()
    if not (args.coco128 / "annotations" / "instances.json").is_file():
        sys.exit(f"coco128 not found at {args.coco128}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = {"device": device, "cpu_capability": cpu_label(), "size": args.size, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        boxes = coco128_subset(args.coco128, Path(tmp) / "boxes.json", args.num_images)
        for family in args.families:
            path, name = model_dir(Path(tmp), family, args.size)
            runs = []
            for _ in range(args.runs):  # the first also pays CUDA's and the data workers' start
                if family == "sam3":
                    runs.append(run_label(path, out / f"{family}.json", args.label_images, args))
                else:
                    runs.append(run_predict(path, boxes, out / f"{family}.json", args))
            row = {**runs[-1], "first_run_images_per_s": runs[0]["images_per_s"]}
            if family != "sam3":
                module = row.pop("module")
                if args.naive_images:
                    naive = naive_boxes_per_s(module, boxes, args.coco128 / "images", args.naive_images)
                    row["naive_boxes_per_s"] = round(naive, 3)
            results["rows"].append({"family": family, "model": name, **row})
            print(json.dumps(results["rows"][-1]), flush=True)
            shutil.rmtree(path)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
