"""Grounding DINO labeling throughput: images/s at the tiny test size and at the real 800x1333 input with the
real Grounding DINO tiny architecture (Swin-T + BERT-base, random weights: speed does not depend on them),
a 1,000-class vocabulary against 80 classes, the cost of a 3-pass schedule against one pass (re-query with
and without reused backbone/text features, and threshold-only annealing), and where the time goes.

    python benchmarks/gdino_label.py [--real-images 2] [--tiny-images 24] [--precision auto] [--out results/bench/gdino]

The real-size model runs in `--precision` (auto: bf16 on a CPU with AVX512-BF16 / AMX, fp32 on others, where
bf16 is emulated); the tiny test-size model in fp32. The output names the CPU capability and each precision.

Two 3-pass schedules. "Nothing found": thresholds of 1.0, which no score exceeds, so every pass asks every
class of every image again with the same captions (TAO pays 3 full forwards; reuse answers passes 2 and 3 from
pass 1's forward). "Classes found": thresholds at the quantiles of the 1-pass scores (all images and classes
pooled) above which 3, 5 and 7 classes per image lie on average, so that passes find some classes and the
later captions change (reuse then saves only the captions that lost no class). The random models' decoder
norm is scaled so that their scores do not saturate (see save_model). The labeling path is
`GroundingDinoLabeler.predict_step` over `GroundingDinoDataModule`'s loader (what `gdino label` runs, minus
Lightning's loop); I/O = image decoding in the loader (no workers, so it is counted) + writing JSON lines.
Prints Markdown tables for BENCHMARKS.md and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import (
    BertTokenizerFast,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
)

from gdino.data import GroundingDinoDataModule
from gdino.model import idea_config, small_config
from gdino.module import GroundingDinoLabeler
from gdino.schedule import Pass
from labelkit.precision import cpu_label, resolve_dtype_name
from labelkit.synthetic import make_synthetic_coco

REPO = Path(__file__).resolve().parents[1]
VOCAB_DIR = REPO.parent / "shared" / "models" / "bert-base-uncased"
COCO128 = REPO.parent / "shared" / "data" / "coco128" / "annotations" / "instances.json"
COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
    "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven "
    "toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).replace("_", "~")
COCO80 = [name.replace("~", " ") for name in COCO80.split()]
ONE_PASS = [{"conf_threshold": 1.0}]  # the cost of one forward: no score exceeds 1.0, nothing to post-process
NOTHING_FOUND = [{"conf_threshold": 1.0}] * 3  # no score exceeds 1.0: every pass asks every class again
FOUND_PER_IMAGE = (3, 5, 7)  # "classes found" schedule: classes per image above each pass's threshold, on average
PARTS = ("backbone", "text encoder", "fusion encoder", "decoder", "rest of model", "pre/post-processing", "I/O")


def class_names(count: int) -> list[str]:
    """The 80 COCO classes, then whole lower-case words of the BERT vocabulary (deterministic)."""
    names = list(COCO80)
    if count <= len(names):
        return names[:count]
    words = [w.strip() for w in (VOCAB_DIR / "vocab.txt").read_text().splitlines()]
    seen = set(names)
    for word in words[2000:]:
        if len(names) == count:
            break
        if word.isalpha() and word.islower() and len(word) >= 4 and word not in seen:
            names.append(word)
            seen.add(word)
    return names


def save_model(path: Path, config: GroundingDinoConfig, logit_scale: float = 1.0) -> Path:
    """Random weights, with the decoder's last norm scaled by `logit_scale` so that class logits stay below
    ~12: unscaled random logits saturate the sigmoid (most scores are exactly 1.0 in float32), and then no
    threshold can make a pass find some classes and miss others."""
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config)
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(logit_scale)
    model.save_pretrained(path)
    GroundingDinoProcessor(GroundingDinoImageProcessor(), BertTokenizerFast.from_pretrained(VOCAB_DIR)).save_pretrained(
        path
    )
    return path


class Timers:
    """Wall time per named module (forward hooks) and per wrapped function."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._start: dict[int, float] = {}

    def module(self, name: str, module: torch.nn.Module) -> None:
        def before(mod, args, kwargs=None):
            self._start[id(mod)] = time.perf_counter()

        def after(mod, args, output):
            self.seconds[name] += time.perf_counter() - self._start.pop(id(mod))

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


def found_schedule(max_scores: list[torch.Tensor], classes: int) -> list[dict]:
    """Thresholds above which FOUND_PER_IMAGE classes per image lie, from each forward's per-prompt best score."""
    pooled = torch.cat([s.flatten().float() for s in max_scores])
    levels = torch.tensor([1 - n / classes for n in FOUND_PER_IMAGE])
    return [{"conf_threshold": float(t)} for t in torch.quantile(pooled, levels)]


def found_per_pass(records: list[dict], passes: int) -> list[float]:
    """Mean classes per image found in each pass but the last (from the classes each pass queried)."""
    found = [0.0] * (passes - 1)
    for r in records:
        queried = [len(p["queried"]) for p in r["passes"]] + [0] * passes  # not queried: nothing left to find
        for k in range(passes - 1):
            found[k] += (queried[k] - queried[k + 1]) / len(records)
    return found


def run(
    labeler, image_dir: Path, names: list[str], passes, annealing: str, out: Path, limit: int, max_scores=None
) -> dict:
    """Label the first `limit` images; return images/s and the time per part.

    `max_scores`: a list that receives each forward's best score per prompt (images x prompts).
    """
    labeler.passes = [Pass(p["conf_threshold"]) for p in passes]
    labeler.annealing = annealing
    data = GroundingDinoDataModule(image_dir=str(image_dir), class_names=names, batch_size=1, num_workers=0)
    labeler.set_vocabulary(data.vocabulary)
    timers = labeler._bench_timers
    timers.seconds.clear()
    forwards = [0]
    scores = labeler._scores

    def counted(*args):
        forwards[0] += 1
        result = scores(*args)
        if max_scores is not None:
            max_scores.append(result[0].amax(1).cpu())
        return result

    labeler._scores = counted
    step_s = io_s = 0.0
    images = 0
    labeled = []
    start = time.perf_counter()
    with torch.inference_mode(), out.open("w") as sink:
        loader = iter(data.predict_dataloader())
        while images < limit:
            t0 = time.perf_counter()
            batch = next(loader, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            records = labeler.predict_step(batch)
            t2 = time.perf_counter()
            sink.write("".join(json.dumps(r) + "\n" for r in records))
            t3 = time.perf_counter()
            step_s += t2 - t1
            io_s += (t1 - t0) + (t3 - t2)
            images += len(records)
            labeled += [{"passes": r["passes"]} for r in records]
    total = time.perf_counter() - start
    del labeler._scores
    seconds = dict(timers.seconds)
    model_s = seconds.pop("model", 0.0)
    parts = {
        "backbone": seconds.get("backbone", 0.0),
        "text encoder": seconds.get("text encoder", 0.0),
        "fusion encoder": seconds.get("fusion encoder", 0.0),
        "decoder": seconds.get("decoder", 0.0),
    }
    parts["rest of model"] = model_s - sum(parts.values())
    parts["pre/post-processing"] = step_s - model_s
    parts["I/O"] = io_s
    return {
        "images": images,
        "classes": len(names),
        "chunks_per_pass0": len(labeler.prompt_tokens.chunks(tuple(range(len(data.vocabulary.prompts))))),
        "forwards": forwards[0],
        "passes": len(passes),
        "thresholds": [p["conf_threshold"] for p in passes],
        "found_per_image_per_pass": found_per_pass(labeled, len(passes)),
        "annealing": annealing,
        "seconds": total,
        "images_per_s": images / total,
        "parts_s": parts,
    }


def make_labeler(model_dir: Path, precision: str, reuse: bool, image_size: dict | None) -> GroundingDinoLabeler:
    labeler = GroundingDinoLabeler(
        str(model_dir),
        precision=precision,
        iteration_scheduler=ONE_PASS,
        aggregation="nms",
        image_size=image_size,
        reuse_features=reuse,
    )
    timers = Timers()
    inner = labeler.model.model
    timers.module("model", labeler.model)
    timers.module("backbone", inner.backbone)
    timers.module("text encoder", inner.text_backbone)
    timers.module("fusion encoder", inner.encoder)
    timers.module("decoder", inner.decoder)
    labeler._bench_timers = timers
    return labeler


def flops_by_part(labeler, image_dir: Path, names: list[str]) -> dict:
    """Matmul/convolution GFLOP of one 1-pass forward on the first image, per part (torch's FlopCounterMode).

    Bounds what reuse can save whatever the speed of each kernel: with every later caption new, 3 passes
    cost at least (backbone + text + 3 x the rest) / (one forward) in FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    labeler.passes = [Pass(1.0)]
    data = GroundingDinoDataModule(image_dir=str(image_dir), class_names=names, batch_size=1, num_workers=0)
    labeler.set_vocabulary(data.vocabulary)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        labeler.predict_step(next(iter(data.predict_dataloader())))
    counts = {name: sum(ops.values()) / 1e9 for name, ops in counter.get_flop_counts().items()}
    top = type(labeler.model).__name__ + ".model."
    modules = {
        "backbone": "backbone",
        "text encoder": "text_backbone",
        "fusion encoder": "encoder",
        "decoder": "decoder",
    }
    parts = {part: counts.get(top + module, 0.0) for part, module in modules.items()}
    parts["rest of model"] = counts["Global"] - sum(parts.values())
    total = counts["Global"]
    caption_free = parts["backbone"] + parts["text encoder"]
    return {
        "gflop": parts,
        "total_gflop": total,
        "three_pass_new_captions_floor": (caption_free + 3 * (total - caption_free)) / total,
    }


def breakdown_table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| run | images | forwards | ms/image | " + " | ".join(PARTS) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in PARTS) + " |",
    ]
    for label, r in rows:
        per = {k: v / r["images"] for k, v in r["parts_s"].items()}
        total = r["seconds"] / r["images"]
        cells = " | ".join(f"{per[k] * 1000:.0f} ({per[k] / total:.0%})" for k in PARTS)
        lines.append(f"| {label} | {r['images']} | {r['forwards']} | {total * 1000:.0f} | {cells} |")
    return lines


def bench_size(name, model_dir, image_dir, precision, image_size, images, big_vocab_images, out) -> dict:
    reuse = make_labeler(model_dir, precision, True, image_size)
    plain = make_labeler(model_dir, precision, False, image_size)
    c80, c1000 = class_names(80), class_names(1000)
    for labeler in (reuse, plain):  # warm-up: first-call allocations and kernel selection are not timed
        run(labeler, image_dir, c80, ONE_PASS, "requery", out / f"{name}_warmup.jsonl", 1)
    r = {}
    scores_80, scores_1000 = [], []
    r["one_pass"] = run(plain, image_dir, c80, ONE_PASS, "requery", out / f"{name}_1pass.jsonl", images, scores_80)
    print(f"[{name}] 1 pass, 80 classes: {r['one_pass']['images_per_s']:.3f} images/s", flush=True)
    found_80 = found_schedule(scores_80, len(c80))
    runs = [  # key, labeler, classes, passes, annealing, images
        ("three_pass_requery_plain", plain, c80, NOTHING_FOUND, "requery", images),
        ("three_pass_requery_reuse", reuse, c80, NOTHING_FOUND, "requery", images),
        ("three_pass_threshold", reuse, c80, NOTHING_FOUND, "threshold", images),
        ("three_pass_found_plain", plain, c80, found_80, "requery", images),
        ("three_pass_found_reuse", reuse, c80, found_80, "requery", images),
    ]
    for key, labeler, names, passes, annealing, limit in runs:
        r[key] = run(labeler, image_dir, names, passes, annealing, out / f"{name}_{key}.jsonl", limit)
    if big_vocab_images > 0:
        r["one_pass_1000_plain"] = run(
            plain, image_dir, c1000, ONE_PASS, "requery", out / f"{name}_1000.jsonl", big_vocab_images, scores_1000
        )
        r["one_pass_1000_reuse"] = run(
            reuse, image_dir, c1000, ONE_PASS, "requery", out / f"{name}_1000r.jsonl", big_vocab_images
        )
        found_1000 = found_schedule(scores_1000, len(c1000))
        for key, labeler in (("three_pass_1000_found_plain", plain), ("three_pass_1000_found_reuse", reuse)):
            r[key] = run(
                labeler, image_dir, c1000, found_1000, "requery", out / f"{name}_{key}.jsonl", big_vocab_images
            )
    # one image per real-size row: the 1-pass baseline runs first and last, and their mean is the unit
    r["one_pass_again"] = run(plain, image_dir, c80, ONE_PASS, "requery", out / f"{name}_1pass_again.jsonl", images)
    base = sum(r[k]["seconds"] / r[k]["images"] for k in ("one_pass", "one_pass_again")) / 2
    for key, value in r.items():
        value["cost_vs_one_pass_80"] = value["seconds"] / value["images"] / base
        print(f"[{name}] {key}: {value['images_per_s']:.3f} images/s, {value['cost_vs_one_pass_80']:.2f}x", flush=True)
    return r


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU capability {m['cpu_capability']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), transformers {m['transformers']}. Random weights. Batch 1 image, no "
        f"loader workers. Real-size precision: {results['precision']} ({results['precision_reason']}).",
        "",
        "| size | run | classes | passes | thresholds | found per image, passes 1-2 | images | forwards | images/s "
        "| cost vs 1 pass, 80 classes (mean of first and last) |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "one_pass": "1 pass (first)",
        "one_pass_again": "1 pass (again, last)",
        "three_pass_requery_plain": "3 passes, nothing found, re-query, no reuse (TAO's cost)",
        "three_pass_requery_reuse": "3 passes, nothing found, re-query, reuse (features, captions, answers)",
        "three_pass_threshold": "3 passes, nothing found, threshold-only annealing",
        "three_pass_found_plain": "3 passes, re-query, classes found, no reuse (TAO's cost)",
        "three_pass_found_reuse": "3 passes, re-query, classes found, reuse",
        "one_pass_1000_plain": "1 pass, 1,000 classes, no reuse",
        "one_pass_1000_reuse": "1 pass, 1,000 classes, reused features",
        "three_pass_1000_found_plain": "3 passes, 1,000 classes, classes found, no reuse (TAO's cost)",
        "three_pass_1000_found_reuse": "3 passes, 1,000 classes, classes found, reuse",
    }
    for size, runs in results["sizes"].items():
        for key, r in runs.items():
            thresholds = ", ".join(f"{t:.7g}" for t in r["thresholds"])
            found = ", ".join(f"{f:.1f}" for f in r["found_per_image_per_pass"]) or "-"
            lines.append(
                f"| {size} | {labels[key]} | {r['classes']} | {r['passes']} | {thresholds} | {found} | {r['images']} "
                f"| {r['forwards']} | {r['images_per_s']:.3f} | {r['cost_vs_one_pass_80']:.2f}x |"
            )
    for size, runs in results["sizes"].items():
        lines += ["", f"Where the time goes, {size} (ms per image, share of the total):", ""]
        lines += breakdown_table([(labels[k], r) for k, r in runs.items()])
    if "real_flops" in results:
        f = results["real_flops"]
        cells = " | ".join(f"{v:.1f} ({v / f['total_gflop']:.0%})" for v in f["gflop"].values())
        lines += [
            "",
            "Matmul/convolution GFLOP of one real-size forward, 80 classes (FlopCounterMode):",
            "",
            "| total | " + " | ".join(f["gflop"]) + " | 3 passes, every caption new, FLOP floor with reuse |",
            "| ---: | " + " | ".join("---:" for _ in f["gflop"]) + " | ---: |",
            f"| {f['total_gflop']:.1f} | {cells} | {f['three_pass_new_captions_floor']:.2f}x |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-images", type=int, default=24, help="images for the tiny test-size model")
    parser.add_argument("--real-images", type=int, default=2, help="800x1333 images for the real tiny model")
    parser.add_argument("--real-1000-images", type=int, default=1, help="800x1333 images with 1,000 classes (0: skip)")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="real-size model precision"
    )
    parser.add_argument("--skip-real", action="store_true", help="only the tiny test-size model")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--out", default="results/bench/gdino")
    args = parser.parse_args()
    if not (VOCAB_DIR / "vocab.txt").is_file():
        raise SystemExit(f"{VOCAB_DIR}/vocab.txt not found: the tokenizer needs ../shared/models/bert-base-uncased")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    import platform

    import transformers

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    results = {
        "command": "python benchmarks/gdino_label.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?"),
            "cores": os.cpu_count(),
            "cpu_capability": cpu_label(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "sizes": {},
    }
    args.precision, results["precision_reason"] = resolve_dtype_name(args.precision, "cpu")
    results["precision"] = args.precision
    print(f"CPU {results['machine']['cpu_capability']}; real size in {args.precision}", flush=True)
    small = make_synthetic_coco(out / "small", max(args.tiny_images, 1), 96, 128, seed=0)
    tiny_dir = save_model(out / "tiny_test_model_scaled", small_config(max_text_len=256), logit_scale=0.7)
    size = {"shortest_edge": 96, "longest_edge": 160}
    results["sizes"]["tiny test model, 96x128 images (resized to 96x128), fp32"] = bench_size(
        "tiny", tiny_dir, small.parent / "images", "fp32", size, args.tiny_images, args.tiny_images, out
    )
    if not args.skip_real:
        start = time.perf_counter()
        real_dir = save_model(out / "grounding_dino_tiny_random_scaled", idea_config("tiny"), logit_scale=0.2)
        results["real_model_build_s"] = time.perf_counter() - start
        big = make_synthetic_coco(out / "real", args.real_images, 800, 1333, seed=0)
        results["sizes"][f"Grounding DINO tiny (Swin-T + BERT-base), 800x1333, {args.precision}"] = bench_size(
            "real", real_dir, big.parent / "images", args.precision, None, args.real_images, args.real_1000_images, out
        )
        flops = flops_by_part(
            make_labeler(real_dir, args.precision, False, None), big.parent / "images", class_names(80)
        )
        results["real_flops"] = flops
        print(f"[real] GFLOP per forward: {flops}", flush=True)
    table = markdown(results)
    print(table)
    (out / "results.json").write_text(json.dumps({**results, "markdown": table}, indent=1, default=str))


if __name__ == "__main__":
    main()
