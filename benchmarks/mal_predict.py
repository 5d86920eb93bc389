"""MAL predict throughput: boxes/s and images/s of `mal predict`, FLOPs per box, achieved FLOP/s against this
machine's matmul ceiling (measured in the same run), and a straightforward per-box reference pipeline on the
same weights and data (PIL crop + resize per box, batch of one box, fp32: the way the original MAL labels).

    python benchmarks/mal_predict.py [--num-images 2000] [--reference-images 60] [--out results/bench/mal_predict]

Model: configs/mal/coco128_cpu.yaml's model settings (ViT-Tiny/16, crop 256, 128-channel mask head) with
random weights (seed 1234): speed does not depend on the weights. Our path is the real predict path
(Lightning `trainer.predict` with the MaskLabelWriter, data loading in a worker) in the precision `auto` chooses,
as the config does: bf16-mixed on a CPU with AVX512-BF16 / AMX, 32-true on others (`--precision` overrides).
The output names the CPU capability and that precision beside every number.
Data: ../shared/data/coco128 (skipped with a message when absent) and a synthetic set (labelkit.synthetic).
Prints Markdown tables for BENCHMARKS.md and writes results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from labelkit.coco import load_coco
from labelkit.masks import mask_iou, mask_to_rle, segmentation_to_mask
from labelkit.precision import DTYPE_NAMES, cpu_label, resolve_precision
from labelkit.synthetic import make_synthetic_coco
from mal.crops import expand_box, fixed_margins, xywh_to_xyxy
from mal.data import COCOBoxDataModule
from mal.decoder import size_bucket
from mal.module import IMAGENET_MEAN, IMAGENET_STD, MALModule
from mal.writer import MaskLabelWriter

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"
CONFIG = REPO / "configs" / "mal" / "coco128_cpu.yaml"


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_capability": cpu_label(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def matmul_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """Sustained FLOP/s of an n x n x n matmul (the ceiling the model is compared against)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def build_module(config: Path) -> tuple[MALModule, dict]:
    cfg = yaml.safe_load(config.read_text())
    model_args = dict(cfg["model"], crop_size=cfg["data"]["crop_size"])
    torch.manual_seed(1234)
    return MALModule(**model_args).eval(), cfg


def flops_per_box(module: MALModule) -> dict[int, float]:
    """Forward FLOPs of one box, per size bucket (the decoder works at a bucket-dependent scale)."""
    hp = module.hparams
    x = torch.zeros(1, 3, hp.crop_size, hp.crop_size)
    out = {}
    for bucket, area in enumerate((16.0**2, 64.0**2, 200.0**2)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module.student(x, torch.tensor([area]), hp.loss_size)
        out[bucket] = counter.get_total_flops()
    return out


class TimedWriter(MaskLabelWriter):
    """The real writer, timing the loop and its own share (paste-back results -> RLE -> JSON lines)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.write_seconds = 0.0
        self.loop_start = self.loop_end = None

    def on_predict_start(self, trainer, pl_module) -> None:
        super().on_predict_start(trainer, pl_module)
        self.loop_start = time.perf_counter()

    def on_predict_end(self, trainer, pl_module) -> None:
        super().on_predict_end(trainer, pl_module)  # waits for the writer thread's last batch
        self.loop_end = time.perf_counter()

    def write_batch(self, *args, **kwargs):
        start = time.perf_counter()
        super().write_batch(*args, **kwargs)
        self.write_seconds += time.perf_counter() - start


def run_ours(module, cfg, ann_path, img_dir, out: Path, precision: str, eval_batch_size: int, workers: int) -> dict:
    data = COCOBoxDataModule(
        predict_ann_path=str(ann_path),
        predict_img_dir=str(img_dir),
        crop_size=cfg["data"]["crop_size"],
        eval_batch_size=eval_batch_size,
        num_workers=workers,
        test_margin_rate=tuple(cfg["data"]["test_margin_rate"]),
    )
    writer = TimedWriter(label_dump_path=str(out), fresh=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        callbacks=[writer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    total = time.perf_counter() - start
    loop = writer.loop_end - writer.loop_start
    summary = writer.summary
    return {
        "images": summary["images"],
        "boxes": summary["boxes"],
        "loop_s": loop,
        "total_s": total,
        "writer_s": writer.write_seconds,
        "images_per_s": summary["images"] / loop,
        "boxes_per_s": summary["boxes"] / loop,
        "output": str(out),
    }


def reference_predict(net, ann_path, img_dir, crop_size: int, loss_size: int, thresholds, limit_images: int) -> dict:
    """The straightforward pipeline: per box, decode the image with PIL, crop the 1.3x box (zero outside),
    resize it, run the model on a batch of one box in fp32, resize the logits to the crop, paste into an
    image-size mask, threshold and RLE-encode."""
    coco = load_coco(str(ann_path), str(img_dir))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    margins = fixed_margins((0.6, 0.6))
    masks, images, boxes = {}, 0, 0
    start = time.perf_counter()
    for image_info in coco.images[:limit_images]:
        images += 1
        height, width = image_info["height"], image_info["width"]
        for index in coco.annotation_indices_by_image[image_info["id"]]:
            ann = coco.annotations[index]
            if ann.get("iscrowd", 0):
                continue
            boxes += 1
            pil = Image.open(coco.image_path(image_info)).convert("RGB")  # one decode per box
            box = xywh_to_xyxy(ann["bbox"])
            crop_box = expand_box(box, margins)
            crop = pil.crop(crop_box).resize((crop_size, crop_size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)[None]
            area = torch.tensor([(box[2] - box[0]) * (box[3] - box[1])], dtype=torch.float32)
            with torch.no_grad():
                logits = net((x - mean) / std, area, loss_size)
            cx0, cy0, cx1, cy1 = crop_box
            probs = F.interpolate(logits.float(), size=(cy1 - cy0, cx1 - cx0), mode="bilinear")[0, 0].sigmoid()
            full = torch.zeros(height, width)
            bx0, by0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
            bx1, by1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
            if bx1 > bx0 and by1 > by0:
                full[by0:by1, bx0:bx1] = probs[by0 - cy0 : by1 - cy0, bx0 - cx0 : bx1 - cx0]
            threshold = thresholds[int(size_bucket(area)[0])]
            masks[ann["id"]] = mask_to_rle((full > threshold).numpy())
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "boxes": boxes,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "boxes_per_s": boxes / seconds,
        "masks": masks,
    }


def agreement(reference_masks: dict, labels_path: str, ann_path) -> float:
    """Mean IoU between the reference's masks and ours (same weights; precision and crop method may differ)."""
    data = json.loads(Path(labels_path).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    ious = []
    for ann in data["annotations"]:
        if ann["id"] in reference_masks:
            shape = sizes[ann["image_id"]]
            ours = segmentation_to_mask(ann["segmentation"], *shape)
            ref = segmentation_to_mask(reference_masks[ann["id"]], *shape)
            ious.append(mask_iou(ours, ref))
    return float(np.mean(ious)) if ious else float("nan")


def subset(ann_path: Path, num_images: int, out: Path) -> Path:
    data = json.loads(ann_path.read_text())
    data["images"] = data["images"][:num_images]
    keep = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    out.write_text(json.dumps(data))
    return out


def bucket_flops(ann_path: Path, flops: dict[int, float]) -> float:
    """Total forward FLOPs for the non-crowd boxes of a file."""
    anns = [a for a in json.loads(ann_path.read_text())["annotations"] if not a.get("iscrowd", 0)]
    areas = torch.tensor([a["bbox"][2] * a["bbox"][3] for a in anns], dtype=torch.float32)
    return float(sum(flops[int(b)] for b in size_bucket(areas)))


def upper_median(values: list):
    """The median of an odd count, the upper of the two middle values of an even one."""
    return sorted(values)[len(values) // 2]


def median_run(runs: list[dict]) -> dict:
    """The run with the median speed, and every round's speed beside it."""
    speeds = [run["boxes_per_s"] for run in runs]
    return {**runs[speeds.index(upper_median(speeds))], "rounds": speeds}


def set_fraction_of_ceiling(run: dict, flops: float, seconds: float, dtype: str, ceilings: dict) -> None:
    run["achieved_gflops"] = flops / seconds / 1e9
    run["fraction_of_matmul"], run["matmul_dtype"] = flops / seconds / ceilings[dtype], dtype


def bench_dataset(name, ann_path, img_dir, module, compiled, cfg, args, out: Path, flops, ceilings) -> dict:
    """Our path over the whole set once, in `args.precision`; then, on its first images, `--rounds` rounds that
    each run our path (compiled, and in fp32 when ours is not, when asked) and the reference, in an order
    rotated from round to round. Single runs on this machine vary by up to 20%, so each ratio is the median of
    the rounds' ratios, with their range."""
    hp = module.hparams
    result = {"dataset": name}
    batch, precision = args.eval_batch_size, args.precision
    dtype = DTYPE_NAMES[precision]
    ours = run_ours(module, cfg, ann_path, img_dir, out / f"{name}_ours.json", precision, batch, args.workers)
    total_flops = bucket_flops(ann_path, flops)
    ours["gflop_per_box"] = total_flops / ours["boxes"] / 1e9
    set_fraction_of_ceiling(ours, total_flops, ours["loop_s"], dtype, ceilings)
    result["ours"] = ours
    print(f"[{name}] ours {dtype}: {ours['boxes_per_s']:.1f} boxes/s, {ours['images_per_s']:.2f} images/s", flush=True)

    small = subset(ann_path, args.reference_images, out / f"{name}_subset.json")

    def ours_on_small(variant, precision: str, key: str):
        output = out / f"{name}_{key}.json"
        return lambda: run_ours(variant, cfg, small, img_dir, output, precision, batch, args.workers)

    # key -> (one run, the dtype whose matmul ceiling it is compared with)
    variants = {"ours_subset": (ours_on_small(module, precision, "ours_subset"), dtype)}
    if compiled is not None:
        key = "ours_compiled_subset"
        variants[key] = (ours_on_small(compiled, precision, key), dtype)
        result["compiled_first_run_s"] = ours_on_small(compiled, precision, "compiled_first")()["loop_s"]
    if not args.skip_fp32 and dtype != "fp32":
        variants["ours_fp32_subset"] = (ours_on_small(module, "32-true", "ours_fp32_subset"), "fp32")
    variants["reference_subset"] = (
        lambda: reference_predict(
            module.student, small, img_dir, hp.crop_size, hp.loss_size, module.mask_thresholds, args.reference_images
        ),
        "fp32",
    )
    keys = list(variants)
    runs = {key: [] for key in keys}
    for round_index in range(args.rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            runs[key].append(variants[key][0]())
        reference = runs["reference_subset"][-1]
        reference["mask_iou_vs_ours"] = agreement(reference.pop("masks"), runs["ours_subset"][-1]["output"], small)
        speeds = ", ".join(f"{key} {runs[key][-1]['boxes_per_s']:.1f}" for key in keys)
        print(f"[{name}] round {round_index + 1}: {speeds} boxes/s", flush=True)

    small_flops = bucket_flops(small, flops)
    for key, key_runs in runs.items():
        for run in key_runs:
            seconds = run["seconds"] if key == "reference_subset" else run["loop_s"]
            set_fraction_of_ceiling(run, small_flops, seconds, variants[key][1], ceilings)
        result[key] = median_run(key_runs)
    reference_speeds = [run["boxes_per_s"] for run in runs["reference_subset"]]
    for key in keys[:-1]:
        ratios = [run["boxes_per_s"] / ref for run, ref in zip(runs[key], reference_speeds)]
        result[key]["speedup_vs_reference"] = upper_median(ratios)
        result[key]["speedup_range"] = (min(ratios), max(ratios))
    medians = ", ".join(f"{key} {result[key]['speedup_vs_reference']:.2f}x" for key in keys[:-1])
    images = result["reference_subset"]["images"]
    print(f"[{name}] first {images} images, median of {args.rounds} rounds: {medians} the reference", flush=True)
    return result


def markdown(results: dict) -> str:
    m, c, p = results["machine"], results["matmul_gflops"], results["precision"]
    ceilings = ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in c.items())
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU capability {m['cpu_capability']}, torch {m['torch']} "
        f"({m['torch_threads']} threads). Ours in {p['ours']} ({p['reason']}). "
        f"Matmul ceiling (2048^3, same run): {ceilings}.",
        f"Model: {results['model']}; forward GFLOP per box by size bucket (small/medium/large): "
        + " / ".join(f"{v / 1e9:.2f}" for v in results["flops_per_box"].values()),
        "",
        "| data | path | images | boxes | images/s | boxes/s | GFLOP/s | of matmul ceiling | vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    dtype = DTYPE_NAMES[p["ours"]]
    labels = {
        "ours": f"ours, {dtype}",
        "ours_subset": f"ours, {dtype}",
        "ours_compiled_subset": f"ours, {dtype}, compiled backbone",
        "ours_fp32_subset": "ours, fp32",
        "reference_subset": "reference (per box, fp32)",
    }
    for r in results["datasets"]:
        images = r["reference_subset"]["images"]
        for key, label in labels.items():
            if key not in r:
                continue
            x = r[key]
            if key == "ours":
                data, ratio = f"{r['dataset']} (all)", ""
            else:
                data, ratio = f"{r['dataset']} (first {images} images)", "1.00x"
            if "speedup_vs_reference" in x:
                low, high = x["speedup_range"]
                ratio = f"{x['speedup_vs_reference']:.2f}x ({low:.2f}-{high:.2f})"
            lines.append(
                f"| {data} | {label} | {x['images']} | {x['boxes']} | {x['images_per_s']:.2f} | "
                f"{x['boxes_per_s']:.1f} | {x['achieved_gflops']:.0f} | "
                f"{x['fraction_of_matmul']:.0%} of {x['matmul_dtype']} | {ratio} |"
            )
    lines.append("")
    for r in results["datasets"]:
        o = r["ours"]
        lines.append(
            f"- {r['dataset']}: predict loop {o['loop_s']:.1f} s (of which writer: paste results -> RLE -> JSON "
            f"{o['writer_s']:.1f} s), whole `trainer.predict` incl. merge {o['total_s']:.1f} s; reference masks vs "
            f"ours: mean IoU {r['reference_subset']['mask_iou_vs_ours']:.3f}"
        )
        if "ours_compiled_subset" in r:
            eager, compiled = r["ours_subset"]["rounds"], r["ours_compiled_subset"]["rounds"]
            lines.append(
                f"- {r['dataset']}: compiled / eager {dtype} per round: "
                + ", ".join(f"{c / e:.2f}x" for c, e in zip(compiled, eager))
                + f"; the compiled copy's first run on this set took {r['compiled_first_run_s']:.0f} s (on the "
                "first set, this run compiles; the batch size is dynamic, so later sets do not compile again)"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=2000, help="synthetic images")
    parser.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--reference-images", type=int, default=60, help="images the reference pipeline labels")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="images per predict step")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16-mixed", "32-true"),
        help="our path's precision; auto: bf16-mixed on a CPU with native bf16, else 32-true",
    )
    parser.add_argument("--skip-fp32", action="store_true", help="do not also time our path in fp32 (when not fp32)")
    parser.add_argument("--skip-coco128", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time --model.compile_backbone in every round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of our path and the reference side by side")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--workers", type=int, default=1, help="data loading processes of our path")
    parser.add_argument("--matmul-seconds", type=float, default=3.0, help="time per matmul ceiling measurement")
    parser.add_argument("--config", default=str(CONFIG), help="its model and data.crop_size settings are used")
    parser.add_argument("--out", default="results/bench/mal_predict")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {"machine": machine(), "command": "python benchmarks/mal_predict.py " + " ".join(sys.argv[1:])}
    args.precision, reason = resolve_precision(args.precision, "cpu")
    results["precision"] = {"ours": args.precision, "reason": reason}
    print(f"CPU {results['machine']['cpu_capability']}; ours in {args.precision} ({reason})", flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the ceiling of every dtype a run uses
    results["matmul_gflops"] = {
        name: matmul_flops(dtypes[name], seconds=args.matmul_seconds) / 1e9
        for name in dict.fromkeys(("fp32", DTYPE_NAMES[args.precision]))
    }
    ceilings = {k: v * 1e9 for k, v in results["matmul_gflops"].items()}
    print(f"matmul ceiling: {results['matmul_gflops']}", flush=True)
    module, cfg = build_module(Path(args.config))
    hp = module.hparams
    results["model"] = (
        f"{hp.arch} crop {hp.crop_size}, mask head {hp.mask_head_hidden_channel} ch, random weights (seed 1234)"
    )
    flops = flops_per_box(module)
    compiled = None
    if args.compile:  # a copy with the same weights, so that eager runs stay eager
        compiled = copy.deepcopy(module)
        compiled.hparams.compile_backbone = True
    results["flops_per_box"] = {["small", "medium", "large"][k]: v for k, v in flops.items()}
    results["datasets"] = []

    ann = COCO128 / "annotations" / "instances.json"
    if args.skip_coco128:
        pass
    elif ann.is_file():
        results["datasets"].append(
            bench_dataset("coco128", ann, COCO128 / "images", module, compiled, cfg, args, out, flops, ceilings)
        )
    else:
        print(f"skipping coco128: {ann} not found (needs ../shared/data/coco128 beside the repository)")

    start = time.perf_counter()
    height, width = args.image_size
    synthetic = make_synthetic_coco(out / "synthetic", args.num_images, height, width, max_objects=5, seed=0)
    results["synthetic_generation_s"] = time.perf_counter() - start
    name = f"synthetic{args.num_images}"
    results["datasets"].append(
        bench_dataset(name, synthetic, out / "synthetic" / "images", module, compiled, cfg, args, out, flops, ceilings)
    )
    table = markdown(results)
    print(table)
    (out / "results.json").write_text(json.dumps({**results, "markdown": table}, indent=1, default=str))


if __name__ == "__main__":
    main()
