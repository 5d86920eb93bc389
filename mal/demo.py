"""`make demo`: synthetic shapes -> fit MAL on their boxes -> predict masks -> evaluate -> overlays.

Everything lands in one folder (default results/demo); the last lines printed say where. The config's
`precision: auto` trains in bf16 on a CPU with AVX512-BF16 / AMX and in fp32 on others (AVX2), where bf16
would be emulated; the log and metrics.json say which.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from labelkit.cli import configure_logging
from labelkit.coco import load_coco
from labelkit.images import decode_image
from labelkit.masks import segmentation_to_mask
from labelkit.precision import cpu_label
from labelkit.synthetic import make_synthetic_coco
from labelkit.visualize import draw_overlay, image_grid, save_rgb
from mal.__main__ import cli_main
from mal.evaluate import evaluate_files, print_table, write_box_fill

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mal" / "demo.yaml"


def write_overlays(labels_path: Path, image_dir: Path, out_dir: Path, count: int = 8) -> Path:
    coco = load_coco(labels_path, image_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for image in coco.images[:count]:
        anns = [coco.annotations[i] for i in coco.annotation_indices_by_image[image["id"]]]
        masks = [segmentation_to_mask(a["segmentation"], image["height"], image["width"]) for a in anns]
        names = [f"{coco.categories_by_id[a['category_id']]['name']} {a['mal_score']:.2f}" for a in anns]
        picture = draw_overlay(decode_image(coco.image_path(image)), masks, [a["bbox"] for a in anns], names)
        save_rgb(out_dir / Path(image["file_name"]).with_suffix(".png").name, picture)
        pictures.append(picture)
    save_rgb(out_dir / "grid.png", image_grid(pictures, columns=4, cell=320))
    return out_dir / "grid.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/demo", help="folder for data, runs, labels and overlays")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--epochs", type=int, help="override the config's max_epochs")
    args = parser.parse_args()
    configure_logging()
    out = Path(args.out).resolve()
    data = out / "data"
    start = time.time()

    print(f"1/4 synthetic dataset in {data}")
    train_json = make_synthetic_coco(data, args.train_images, seed=0, name="train")
    val_json = make_synthetic_coco(data, args.val_images, seed=1, name="val")

    print(f"2/4 fitting MAL on the training boxes (config {CONFIG})")
    common = ["--config", str(CONFIG), "--data.val_ann_path", str(val_json), "--data.val_img_dir", str(data / "images")]
    runs = out / "runs"
    loggers = [
        f'{{"class_path": "lightning.pytorch.loggers.{kind}", "init_args": {{"save_dir": "{runs}", "name": "mal"}}}}'
        for kind in ("CSVLogger", "TensorBoardLogger")
    ]
    logger_dirs = [f"--trainer.logger=[{','.join(loggers)}]"]
    fit_args = [
        "fit",
        *common,
        *logger_dirs,
        "--data.train_ann_path",
        str(train_json),
        "--data.train_img_dir",
        str(data / "images"),
    ]
    if args.epochs:
        fit_args.append(f"--trainer.max_epochs={args.epochs}")
    cli = cli_main(fit_args)
    checkpoint = cli.trainer.checkpoint_callback.best_model_path
    conditions = {"cpu_capability": cpu_label(), "precision": cli.trainer.precision}

    print(f"3/4 predicting a mask for every validation box with {checkpoint}")
    labels = out / "labels.json"
    cli_main(
        [
            "predict",
            *common,
            *logger_dirs,
            "--data.predict_ann_path",
            str(val_json),
            "--data.predict_img_dir",
            str(data / "images"),
            "--writer.label_dump_path",
            str(labels),
            "--ckpt_path",
            checkpoint,
        ]
    )

    print("4/4 evaluating against the ground-truth masks")
    box_fill = out / "box_fill.json"
    write_box_fill(str(val_json), str(box_fill))
    mal_metrics, box_metrics = evaluate_files(str(labels), str(val_json)), evaluate_files(str(box_fill), str(val_json))
    print_table(mal_metrics, "MAL masks vs ground truth")
    print_table(box_metrics, "box-fill baseline vs ground truth")
    metrics = {"mal": mal_metrics, "box_fill": box_metrics, **conditions, "seconds": round(time.time() - start)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    grid = write_overlays(labels, data / "images", out / "overlays")

    verdict = "beats" if mal_metrics["mIoU"] > box_metrics["mIoU"] else "does NOT beat"
    print(
        f"\nMAL instance mIoU {mal_metrics['mIoU']:.3f} {verdict} the box-fill baseline "
        f"{box_metrics['mIoU']:.3f} (mask AP {mal_metrics['mask_AP']:.3f} vs {box_metrics['mask_AP']:.3f}); "
        f"{time.time() - start:.0f} s in all, {conditions['precision']} on a {conditions['cpu_capability']} CPU."
    )
    print(
        f"  data:       {data}\n  checkpoint: {checkpoint}\n  labels:     {labels}\n"
        f"  metrics:    {out / 'metrics.json'}\n  overlays:   {grid}\n  logs:       {out / 'runs'} "
        f"(tensorboard --logdir {out / 'runs'})"
    )


if __name__ == "__main__":
    main()
