"""COCO boxes for the Segment Anything box -> mask labelers: MAL's prediction data, plus each image's model
input made in the data-loading workers.

The boxes file is read, validated and split over processes exactly as for `mal predict`
(mal.data.COCOBoxDataModule: one sample per image holding all its non-crowd boxes, clipped to the image;
undecodable or missing images become error samples; each image labelled by exactly one rank, resumed
images left out). Each good sample then gets the model's pixel values (the model directory's own image
processor), the size the image was resized to, and its boxes in the model input's pixels.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from labelkit.images import DEFAULT_MAX_PIXELS
from mal.data import COCOBoxDataModule
from sam.boxes import prompt_boxes

# mal.data.ImageBoxesDataset also cuts MAL's crops of every box. At these settings (margins of -1: the box
# shrunk to its centre) each is a 1-pixel crop of a 1 or 2 pixel square, which costs next to nothing;
# SAM does not use them and the samples drop them.
NO_CROPS = {"crop_size": 1, "test_margin_rate": (-2.0, -2.0)}
UNUSED_KEYS = ("crops", "crop_boxes", "box_masks")


def model_input(sample: dict, image_processor, padded: bool) -> dict:
    """An ImageBoxesDataset sample -> the same with `pixel_values` (3 x S x S float32), `resized_size`
    (height, width of the image inside the model input) and `prompt_boxes` (N x 4, `prompt_boxes`)."""
    sample = {k: v for k, v in sample.items() if k not in UNUSED_KEYS}
    if "error" in sample:
        return sample
    image = sample["image"]  # 3 x H x W uint8
    inputs = image_processor(images=image, return_tensors="pt", input_data_format="channels_first")
    pixel_values = inputs["pixel_values"][0]
    if "reshaped_input_sizes" in inputs:  # SAM / SAM-HQ: the resized image before padding
        resized = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
    else:  # SAM 2 / EdgeTAM: resized to the whole input
        resized = tuple(pixel_values.shape[-2:])
    original = tuple(image.shape[1:])
    sample.update(
        pixel_values=pixel_values,
        resized_size=resized,
        prompt_boxes=prompt_boxes(sample["boxes"], original, resized, padded),
    )
    return sample


class BoxPromptDataset(Dataset):
    """The samples of an ImageBoxesDataset (`images`), each with its model input (`model_input`)."""

    def __init__(self, images: Dataset, image_processor, padded: bool):
        self.images, self.image_processor, self.padded = images, image_processor, padded

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return model_input(self.images[i], self.image_processor, self.padded)


class SamBoxDataModule(COCOBoxDataModule):
    """The boxes to turn into masks.

    Args:
        predict_ann_path: COCO file with the boxes (any segmentation in it is replaced; crowd regions pass through).
        predict_img_dir: folder its `file_name`s are relative to.
        batch_size: images per prediction step (their embeddings are computed in one forward).
        num_workers: data-loading processes (decoding and resizing the images).
        max_pixels: images larger than this are refused (decompression-bomb guard).
        allow_outside_image_dir: accept file names that lead outside the image folder (`../`, absolute
            paths, links to elsewhere); refused by default (`--allow-outside-image-dir`).
        strict: stop at the first image that cannot be read instead of skipping it and listing it in
            errors.jsonl (`--strict`).
    """

    def __init__(
        self,
        predict_ann_path: str | None = None,
        predict_img_dir: str | None = None,
        batch_size: int = 2,
        num_workers: int = 2,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_outside_image_dir: bool = False,
        strict: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"data.batch_size: must be >= 1, got {batch_size}")
        super().__init__(
            predict_ann_path=predict_ann_path,
            predict_img_dir=predict_img_dir,
            eval_batch_size=batch_size,
            num_workers=num_workers,
            max_pixels=max_pixels,
            allow_outside_image_dir=allow_outside_image_dir,
            strict=strict,
            **NO_CROPS,
        )

    def predict_dataloader(self) -> DataLoader:
        """MAL's loader (this rank's images, each once, resumed ones left out) over `BoxPromptDataset`."""
        loader = super().predict_dataloader()
        segmenter = self.trainer.lightning_module.segmenter
        dataset = BoxPromptDataset(loader.dataset, segmenter.image_processor, segmenter.family.padded)
        return DataLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            persistent_workers=loader.persistent_workers,
            pin_memory=torch.cuda.is_available(),
        )
