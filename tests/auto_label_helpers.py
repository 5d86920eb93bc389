"""Tiny real models and specs for the `auto_label generate` tests, built once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from conftest import TINY_MAL_ARGS
from gdino_helpers import save_tiny_model_dir

from labelkit.synthetic import make_synthetic_coco
from mal.__main__ import cli_main

_ASSETS: dict[str, Path] = {}
SMALL_RESIZE = {"test_random_resize": 96, "random_resize_max_size": 160}


def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny MAL checkpoint fitted for one epoch, a tiny Grounding DINO directory, and 12 images with boxes."""
    if not _ASSETS:
        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp("auto_label_assets")
        train = make_synthetic_coco(root, num_images=4, height=96, width=128, max_objects=3, seed=0, name="train")
        boxes = make_synthetic_coco(root, num_images=12, height=96, width=128, max_objects=3, seed=3, name="boxes")
        cli = cli_main(
            [
                "fit",
                *TINY_MAL_ARGS,
                "--data.train_ann_path",
                str(train),
                "--data.train_img_dir",
                str(root / "images"),
                "--trainer.max_epochs",
                "1",
                "--trainer.logger",
                "false",
                f"--trainer.default_root_dir={root / 'run'}",
            ]
        )
        checkpoint = root / "tiny_mal.ckpt"
        cli.trainer.save_checkpoint(checkpoint)
        _ASSETS.update(
            root=root,
            images=root / "images",
            boxes=boxes,
            mal_checkpoint=checkpoint,
            gdino=save_tiny_model_dir(root / "gdino_tiny"),
        )
    return _ASSETS


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def text2mask_spec(assets, results_dir: Path, image_dir: Path | None = None, **top) -> dict:
    """Grounding DINO boxes for two classes on the tiny model, then MAL masks, one image a step."""
    return {
        "autolabel_type": "text2mask",
        "results_dir": str(results_dir),
        "batch_size": 1,
        "num_workers": 0,
        **top,
        "grounding_dino": {
            "checkpoint": str(assets["gdino"]),
            "visualize": False,
            "iteration_scheduler": [{"conf_threshold": 0.5}],
            "dataset": {
                "image_dir": str(image_dir or assets["images"]),
                "class_names": ["star", "ring"],
                "augmentation": SMALL_RESIZE,
            },
        },
        "mal": {"checkpoint": str(assets["mal_checkpoint"])},
    }


def big_boxes_file(root: Path, num_images: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Noisy 1200x1600 images with 30 boxes each: slow enough (RLE of big masks) to be stopped mid-way."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / "big").mkdir()
    for image_id in range(1, num_images + 1):
        name = f"big_{image_id:02d}.jpg"
        cv2.imwrite(str(root / "big" / name), rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
        images.append({"id": image_id, "file_name": name, "width": 1600, "height": 1200})
        for _ in range(30):
            x, y = rng.uniform(0, 1200), rng.uniform(0, 900)
            bbox = [round(x, 1), round(y, 1), round(rng.uniform(50, 400), 1), round(rng.uniform(50, 300), 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": bbox})
    path = root / "big.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return path, root / "big"


def mal_spec_dict(results_dir, checkpoint, ann_path, img_dir, **top) -> dict:
    """A MAL labeling spec (`top` adds top-level keys such as num_workers)."""
    return {
        "autolabel_type": "mal",
        "results_dir": str(results_dir),
        **top,
        "mal": {"checkpoint": str(checkpoint), "inference": {"ann_path": str(ann_path), "img_dir": str(img_dir)}},
    }


def mal_spec(path: Path, results_dir: Path, checkpoint: Path, ann_path: Path, img_dir: Path) -> Path:
    """A one-image-per-batch MAL labeling spec file (so that a run can be stopped between images)."""
    return write_spec(path, mal_spec_dict(results_dir, checkpoint, ann_path, img_dir, num_workers=0, batch_size=1))


def mal_predict_args(checkpoint, ann_path, img_dir, out: Path, *extra: str) -> list[str]:
    """`mal predict` of the tiny MAL, without loggers, results under `out`'s folder."""
    return [
        "predict",
        *TINY_MAL_ARGS,
        *("--trainer.logger", "false", f"--trainer.default_root_dir={out.parent}", "--ckpt_path", str(checkpoint)),
        *("--data.predict_ann_path", str(ann_path), "--data.predict_img_dir", str(img_dir)),
        *("--writer.label_dump_path", str(out)),
        *extra,
    ]
