"""Peak memory of `python -m mal predict` and `python -m gdino label` on N vs 10 x N synthetic images.

Each run is a separate process (`python -m mal|gdino ...` inside a small wrapper that reports its own peak
RSS, `ru_maxrss`, when the command has returned). Tiny models with random weights, small images, data
loading in the main process (num_workers 0), so the whole run is in the measured process. Results
stream to shard files and the final file is written from them, so the peak should not grow with the
number of images (target: within 10%). Both commands run in the precision `auto` chooses for the CPU (bf16
with AVX512-BF16 / AMX, fp32 on AVX2); the table names it and the CPU capability.

    python benchmarks/memory.py [--sizes 1000 10000] [--out results/bench/memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gdino_label import VOCAB_DIR, save_model  # noqa: E402

from gdino.model import small_config  # noqa: E402
from labelkit.precision import cpu_label, resolve_dtype_name, resolve_precision  # noqa: E402
from labelkit.synthetic import make_synthetic_coco  # noqa: E402

WRAPPER = """
import json, resource, runpy, sys, time
module, report = sys.argv[1], sys.argv[2]
sys.argv = [module] + sys.argv[3:]
start = time.perf_counter()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code not in (None, 0):
        raise
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(report, "w") as f:
    json.dump({"peak_rss_mb": rss / 1024, "seconds": seconds}, f)
"""

TINY_MAL = [
    "--model.arch=vit_tiny_patch16_224",
    "--model.backbone_kwargs={patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
    "--model.mask_head_hidden_channel=16",
    "--model.mask_head_out_channel=16",
    "--model.loss_size=32",
    "--data.crop_size=32",
    "--data.eval_batch_size=8",
    "--data.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def measure(module: str, args: list[str], report: Path) -> dict:
    command = [sys.executable, "-c", WRAPPER, module, str(report), *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{module} failed:\n{result.stderr[-3000:]}")
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--out", default="results/bench/memory")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]), "runs": {}}
    # what `precision: auto` decides inside the commands, on this CPU (they run with --trainer.accelerator=cpu)
    results["cpu_capability"] = cpu_label()
    results["precision"] = {"mal predict": resolve_precision("auto", "cpu")[0]}
    results["precision"]["gdino label"] = resolve_dtype_name("auto", "cpu")[0]
    gdino_model = None
    if (VOCAB_DIR / "vocab.txt").is_file():
        gdino_model = save_model(out / "tiny_gdino", small_config(max_text_len=256))
    for n in args.sizes:
        start = time.perf_counter()
        ann = make_synthetic_coco(out / f"synthetic{n}", n, 64, 80, max_objects=3, seed=0)
        print(f"{n} synthetic images in {time.perf_counter() - start:.0f} s", flush=True)
        boxes = len(json.loads(ann.read_text())["annotations"])
        mal = measure(
            "mal",
            [
                "predict",
                *TINY_MAL,
                f"--data.predict_ann_path={ann}",
                f"--data.predict_img_dir={ann.parent / 'images'}",
                f"--writer.label_dump_path={out / f'mal_{n}.json'}",
                "--writer.fresh=true",
            ],
            out / f"mal_{n}.report.json",
        )
        results["runs"][f"mal predict {n}"] = {"images": n, "boxes": boxes, **mal}
        print(f"mal predict, {n} images: {mal}", flush=True)
        if gdino_model is None:
            print(f"skipping gdino label: {VOCAB_DIR}/vocab.txt not found")
            continue
        gdino = measure(
            "gdino",
            [
                "label",
                f"--model.path={gdino_model}",
                "--model.image_size={shortest_edge: 64, longest_edge: 80}",
                "--model.iteration_scheduler=[{conf_threshold: 0.5}]",
                f"--data.image_dir={ann.parent / 'images'}",
                "--data.class_names=[star, ring, ellipse]",
                "--data.batch_size=8",
                "--data.num_workers=0",
                "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false",
                f"--output={out / f'gdino_{n}.json'}",
                "--writer.fresh=true",
            ],
            out / f"gdino_{n}.report.json",
        )
        results["runs"][f"gdino label {n}"] = {"images": n, **gdino}
        print(f"gdino label, {n} images: {gdino}", flush=True)
    lines = [
        f"CPU capability {results['cpu_capability']}.",
        "",
        "| command | precision | images | peak RSS (MB) | ratio to the smallest run | wall (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for tool in ("mal predict", "gdino label"):
        runs = [(k, v) for k, v in results["runs"].items() if k.startswith(tool)]
        if not runs:
            continue
        base = runs[0][1]["peak_rss_mb"]
        for _, r in runs:
            ratio = r["peak_rss_mb"] / base
            lines.append(
                f"| `{tool}` | {results['precision'][tool]} | {r['images']} | {r['peak_rss_mb']:.0f} | {ratio:.3f} "
                f"| {r['seconds']:.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    (out / "results.json").write_text(json.dumps({**results, "markdown": table}, indent=1))


if __name__ == "__main__":
    main()
