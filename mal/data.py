"""COCO data for MAL: one training sample per box, one evaluation/prediction sample per image.

Training decodes the image, cuts a randomly expanded crop (outside pixels wrap around), resizes it and
returns a clean view for the teacher and a photometrically augmented view for the student, with the
same geometry. Evaluation and prediction return the decoded image once with all its boxes, their fixed
1.3x crop boxes, their crops and box masks, made in the data-loading workers as the original MAL's
test transform makes them (mal.crops).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from labelkit.coco import CocoFile, load_coco
from labelkit.evaluation import describe_left_out, mask_truth
from labelkit.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from labelkit.masks import ground_truth_mask
from labelkit.sharding import ExactShardSampler
from labelkit.shards import StrictSkipError
from labelkit.writers import write_jsonl
from mal.crops import (
    box_mask_in_crop,
    expand_box,
    fixed_margins,
    make_crop,
    make_mask_crop,
    make_training_crop,
    random_margins,
    xywh_to_xyxy,
)

log = logging.getLogger(__name__)


def student_augmentation() -> v2.Transform:
    """Photometric noise for the student only (the teacher sees the clean crop)."""
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.5),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=0.5),
        ]
    )


def trainable_annotations(coco: CocoFile, min_obj_size: float, max_obj_size: float) -> list[int]:
    """Indices of non-crowd annotations inside their image whose box area is within [min_obj_size, max_obj_size]."""
    keep = []
    for index, ann in enumerate(coco.annotations):
        area = ann["bbox"][2] * ann["bbox"][3]
        image = coco.images_by_id[ann["image_id"]]
        inside = reaches_into_image(ann["bbox"], image["width"], image["height"])
        if not ann.get("iscrowd", 0) and inside and min_obj_size <= area <= max_obj_size:
            keep.append(index)
    return keep


def decode_record_image(coco: CocoFile, image_info: dict, max_pixels: int | None) -> np.ndarray:
    """The upright image of an annotation file's record, or ImageDecodeError: also when its decoded size is
    not the record's width x height, since the boxes were then drawn on another version of the image (a
    resized export, an unapplied EXIF rotation) and would cut the wrong pixels, in training as in labelling."""
    image = decode_image(coco.image_path(image_info), max_pixels)
    height, width = image.shape[:2]
    if (height, width) != (image_info["height"], image_info["width"]):
        recorded = f"{image_info['width']}x{image_info['height']}"
        raise ImageDecodeError(f"decoded image is {width}x{height} but the annotation file says {recorded}")
    return image


class BoxCropDataset(Dataset):
    """One training sample per box: clean and augmented crops, the box mask inside the crop and, with
    `mask_min_score`, the annotation's own mask for self-training (see `annotation_mask`)."""

    def __init__(
        self,
        coco: CocoFile,
        indices: list[int],
        crop_size: int,
        margin_rate: tuple[float, float],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        mask_min_score: float | None = None,
    ):
        self.coco, self.indices, self.crop_size = coco, indices, crop_size
        self.margin_rate, self.max_pixels = margin_rate, max_pixels
        self.mask_min_score = mask_min_score
        self.augment = student_augmentation()

    def __len__(self) -> int:
        return len(self.indices)

    def annotation_mask(self, ann: dict, image_info: dict) -> np.ndarray | None:
        """The H x W mask of an annotation whose `mal_score` (1 when it has none, as a person's mask) is at
        least `mask_min_score`; None for a lower score or no usable segmentation."""
        if ann.get("mal_score", 1.0) < self.mask_min_score or not ann.get("segmentation"):
            return None
        return ground_truth_mask(ann["segmentation"], image_info["height"], image_info["width"])

    def __getitem__(self, i: int) -> dict | None:
        ann = self.coco.annotations[self.indices[i]]
        image_info = self.coco.images_by_id[ann["image_id"]]
        try:
            image = decode_record_image(self.coco, image_info, self.max_pixels)
        except ImageDecodeError as e:  # counted and reported by the DataModule (this may run in a worker)
            return {"skipped": {"image_id": image_info["id"], "file_name": image_info["file_name"], "reason": str(e)}}
        rng = np.random.default_rng([torch.initial_seed() % 2**32, i])
        box = clip_box(xywh_to_xyxy(ann["bbox"]), image.shape[1], image.shape[0])
        crop_box = expand_box(box, random_margins(rng, self.margin_rate))
        views = {
            "image": make_training_crop(image, crop_box, self.crop_size),
            "box_mask": box_mask_in_crop(box, crop_box, self.crop_size)[None].float(),
        }
        if self.mask_min_score is not None:
            mask = self.annotation_mask(ann, image_info)
            views["mask_valid"] = torch.tensor(float(mask is not None))
            if mask is None:
                views["mask"] = torch.zeros_like(views["box_mask"])
            else:
                views["mask"] = make_mask_crop(mask, crop_box, self.crop_size) * views["box_mask"]
        if rng.random() < 0.5:
            views = {k: v.flip(-1) if v.ndim == 3 else v for k, v in views.items()}
        return {
            **views,
            "student_image": self.augment(views["image"]),
            "box_area": torch.tensor(ann["bbox"][2] * ann["bbox"][3], dtype=torch.float32),
        }


def collate_boxes(samples: list[dict]) -> dict:
    """Stack the crops; boxes whose image could not be decoded travel along under `skipped`."""
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    samples = [s for s in samples if "skipped" not in s]
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]} if samples else {}
    return {**batch, "skipped": skipped} if skipped else batch


def clip_box(box_xyxy, width: int, height: int) -> list[float]:
    """The part of a box inside the image (a box outside it becomes a zero-size box on its border).

    Boxes reaching far outside the image would otherwise make huge crops (and enormous coordinates
    overflow integer crop boxes); the part outside holds no pixels to learn or predict from anyway.
    """
    x0, y0, x1, y1 = box_xyxy
    x0, x1 = (min(max(v, 0.0), float(width)) for v in (x0, x1))
    y0, y1 = (min(max(v, 0.0), float(height)) for v in (y0, y1))
    return [x0, y0, x1, y1]


def reaches_into_image(bbox_xywh, width: float, height: float) -> bool:
    """Whether any part of the box lies inside the image."""
    x, y, w, h = bbox_xywh
    return x < width and y < height and x + w > 0 and y + h > 0


def box_crops(image: np.ndarray, boxes_xyxy: list[list[float]], margins, crop_size: int) -> dict:
    """What prediction needs of one H x W x 3 uint8 image and its boxes: the image (3 x H x W), boxes
    (N x 4 float64), crop boxes (N x 4 int64), crops (N x 3 x S x S uint8), box masks (N x S x S uint8)."""
    crop_boxes = [expand_box(b, margins) for b in boxes_xyxy]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
        "boxes": torch.tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4),
        "crop_boxes": torch.tensor(crop_boxes, dtype=torch.int64).reshape(-1, 4),
        "crops": torch.stack([make_crop(image, c, crop_size) for c in crop_boxes])
        if crop_boxes
        else torch.zeros(0, 3, crop_size, crop_size, dtype=torch.uint8),
        "box_masks": torch.stack([box_mask_in_crop(b, c, crop_size) for b, c in zip(boxes_xyxy, crop_boxes)])
        if crop_boxes
        else torch.zeros(0, crop_size, crop_size, dtype=torch.uint8),
    }


class ImageBoxesDataset(Dataset):
    """One sample per image: the decoded image, its non-crowd boxes, their test crop boxes, crops (uint8
    N x 3 x crop_size x crop_size) and box masks in the crops (uint8 N x crop_size x crop_size), and GT masks."""

    def __init__(
        self,
        coco: CocoFile,
        test_margin_rate: tuple[float, float],
        crop_size: int,
        with_masks: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.coco, self.crop_size, self.with_masks, self.max_pixels = coco, crop_size, with_masks, max_pixels
        self.margins = fixed_margins(test_margin_rate)
        self.image_positions = [
            pos
            for pos, im in enumerate(coco.images)
            if any(not coco.annotations[i].get("iscrowd", 0) for i in coco.annotation_indices_by_image[im["id"]])
        ]

    def __len__(self) -> int:
        return len(self.image_positions)

    def __getitem__(self, i: int) -> dict:
        image_pos = self.image_positions[i]
        image_info = self.coco.images[image_pos]
        indices = [
            j
            for j in self.coco.annotation_indices_by_image[image_info["id"]]
            if not self.coco.annotations[j].get("iscrowd", 0)
        ]
        anns = [self.coco.annotations[j] for j in indices]
        sample = {
            "image_pos": image_pos,
            "image_id": image_info["id"],
            "file_name": image_info["file_name"],
            "ann_indices": indices,
        }
        try:
            image = decode_record_image(self.coco, image_info, self.max_pixels)
        except ImageDecodeError as e:
            return {**sample, "error": str(e)}
        height, width = image.shape[:2]
        boxes = [clip_box(xywh_to_xyxy(a["bbox"]), width, height) for a in anns]  # the writer flags clipped ones
        sample.update(box_crops(image, boxes, self.margins, self.crop_size))
        sample["category_ids"] = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        if self.with_masks:  # box-only and degenerate records are left out of both mIoU and AP (labelkit.evaluation)
            masks = [ground_truth_mask(a.get("segmentation"), height, width) for a in anns]
            kept = [m for m in masks if m is not None]
            sample["gt_scored"] = torch.tensor([m is not None for m in masks], dtype=torch.bool)
            sample["gt_masks"] = torch.from_numpy(np.stack(kept)) if kept else None
            sample["gt_areas"] = torch.tensor([float(m.sum()) for m in kept])
        return sample


def _skip_record(sample: dict) -> dict:
    return {"image_id": sample["image_id"], "file_name": sample["file_name"], "reason": sample["error"]}


def collate_images(samples: list[dict]) -> list[dict]:
    return samples


class COCOBoxDataModule(L.LightningDataModule):
    """COCO boxes for MAL. Training filters boxes by size; validation and prediction keep every box.

    Args:
        train_ann_path / train_img_dir: boxes to learn from (their masks are read only for self-training).
        train_mask_min_score: self-training: also learn from the masks of train_ann_path (a previous run's
            labels.json) whose `mal_score` is at least this (masks without one count as 1); with
            model.loss_mask_weight. None: boxes only, as MAL.
        val_ann_path / val_img_dir: images with ground-truth masks for mIoU and mask AP.
        predict_ann_path / predict_img_dir: boxes to label (defaults to the validation set).
        crop_size: side of the square crop given to the ViT.
        batch_size: boxes per training step (per device).
        eval_batch_size: images per validation/prediction step.
        num_workers: data loading processes.
        min_obj_size / max_obj_size: box-area range used for training.
        margin_rate: training expansion range per side.
        test_margin_rate: fixed expansion at test time (0.6 -> a crop 1.3x the box).
        max_pixels: images larger than this are refused (decompression-bomb guard).
        allow_outside_image_dir: accept file names that lead outside the image folder (`../`, absolute
            paths, links to elsewhere); refused by default (`--allow-outside-image-dir`).
        strict: stop at the first image that cannot be read, or whose decoded size is not its record's,
            instead of skipping and listing it (`--strict`). Without it, prediction lists skipped images in
            errors.jsonl, and fit and validation count them and list them in errors.jsonl in the log folder.
    """

    def __init__(
        self,
        train_ann_path: str | None = None,
        train_img_dir: str | None = None,
        val_ann_path: str | None = None,
        val_img_dir: str | None = None,
        predict_ann_path: str | None = None,
        predict_img_dir: str | None = None,
        crop_size: int = 512,
        batch_size: int = 3,
        eval_batch_size: int = 2,
        num_workers: int = 2,
        min_obj_size: float = 2048,
        max_obj_size: float = 1e10,
        margin_rate: tuple[float, float] = (0.0, 1.2),
        test_margin_rate: tuple[float, float] = (0.6, 0.6),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        train_mask_min_score: float | None = None,
        allow_outside_image_dir: bool = False,
        strict: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.strict = batch_size, strict
        self.skipped: dict[int, dict] = {}  # image id -> what fit/validation could not read, and why
        self.train_coco = self.val_coco = self.predict_coco = None

    def setup(self, stage: str) -> None:
        self.load_annotations(stage)
        if stage == "predict":
            self.predict_skip: set[int] = set()  # image positions already labelled (set by a resuming writer)
            self.allow_zero_length_dataloader_with_multiple_devices = True  # a rank may have no image left

    def load_annotations(self, stage: str) -> None:
        """Read and validate the annotation files `stage` needs (once); the CLI calls this before building
        the model, so that a bad file stops the command before any model work."""
        hp = self.hparams
        if stage == "fit" and self.train_coco is None:
            if not hp.train_ann_path:
                raise ValueError("data.train_ann_path is required for fit")
            self.train_coco = load_coco(hp.train_ann_path, hp.train_img_dir, **self._path_rules)
        if stage in ("fit", "validate", "test") and hp.val_ann_path and self.val_coco is None:
            self.val_coco = load_coco(hp.val_ann_path, hp.val_img_dir, **self._path_rules)
            for line in describe_left_out(mask_truth(self.val_coco).left_out):
                log.info("%s: %s", hp.val_ann_path, line)
        if stage in ("validate", "test") and self.val_coco is None:
            raise ValueError(f"data.val_ann_path is required for {stage}")
        if stage == "predict" and self.predict_coco is None:  # `auto_label generate` may have loaded it
            self.predict_coco = self.load_predict_coco()

    def load_predict_coco(self) -> CocoFile:
        """The boxes to label, validated; a missing image file is skipped and listed later, not an error."""
        hp = self.hparams
        path = hp.predict_ann_path or hp.val_ann_path
        if not path:
            raise ValueError("data.predict_ann_path is required for predict")
        image_dir = hp.predict_img_dir if hp.predict_ann_path else hp.val_img_dir
        return load_coco(path, image_dir, allow_missing_images=True, **self._path_rules)

    @property
    def _path_rules(self) -> dict:
        return {"allow_outside_image_dir": self.hparams.allow_outside_image_dir}

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Fit / validation: count the images that could not be read (once each); strict: stop."""
        if isinstance(batch, dict):  # training: crops, plus one entry per box whose image was skipped
            items = [(item, 1) for item in batch.pop("skipped", [])]
            result = batch or None  # every box of the batch skipped: training_step skips the step
        else:  # validation / test / predict: one sample per image (predict's errors go to errors.jsonl)
            predicting = self.trainer is not None and self.trainer.predicting
            errors = [] if predicting else [s for s in batch if "error" in s]
            items = [(_skip_record(s), len(s["ann_indices"])) for s in errors]
            result = batch
        for item, boxes in items:
            if self.strict:
                raise StrictSkipError(f"--strict: {item['file_name']}: {item['reason']}")
            if item["image_id"] not in self.skipped:
                log.warning("skipping %s: %s", item["file_name"], item["reason"])
                self.skipped[item["image_id"]] = {**item, "boxes_skipped": 0}
            self.skipped[item["image_id"]]["boxes_skipped"] += boxes
        return result

    def teardown(self, stage: str) -> None:
        """After fit / validation: say how many images were skipped and list them in errors.jsonl."""
        if stage == "predict" or not self.skipped or self.trainer is None or not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "errors.jsonl"
        write_jsonl(path, self.skipped.values())
        boxes = sum(s["boxes_skipped"] for s in self.skipped.values())
        stage = getattr(stage, "value", stage)
        print(f"{stage}: {len(self.skipped)} images could not be read ({boxes} box samples skipped); listed in {path}")

    def _loader(self, dataset, batch_size, collate_fn, shuffle=False) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate_fn,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        indices = trainable_annotations(self.train_coco, hp.min_obj_size, hp.max_obj_size)
        dropped = sum(not a.get("iscrowd", 0) for a in self.train_coco.annotations) - len(indices)
        log.info(
            "training on %d boxes (%d outside the size range [%g, %g] or outside their image not used for training)",
            len(indices),
            dropped,
            hp.min_obj_size,
            hp.max_obj_size,
        )
        if not indices:
            raise ValueError(f"{hp.train_ann_path}: no box within min_obj_size/max_obj_size to train on")
        dataset = BoxCropDataset(
            self.train_coco, indices, hp.crop_size, hp.margin_rate, hp.max_pixels, hp.train_mask_min_score
        )
        return self._loader(dataset, hp.batch_size, collate_boxes, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_coco is None:
            return []
        hp = self.hparams
        dataset = ImageBoxesDataset(self.val_coco, hp.test_margin_rate, hp.crop_size, True, hp.max_pixels)
        return self._loader(dataset, self.hparams.eval_batch_size, collate_images)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """This process's share of the images, each exactly once, minus those `predict_skip` names."""
        hp = self.hparams
        dataset = ImageBoxesDataset(self.predict_coco, hp.test_margin_rate, hp.crop_size, False, hp.max_pixels)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        skip = {i for i, pos in enumerate(dataset.image_positions) if pos in self.predict_skip}
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.eval_batch_size,
            sampler=ExactShardSampler(len(dataset), rank, world, skip),
            num_workers=workers,
            collate_fn=collate_images,
            persistent_workers=workers > 0,
        )
