"""Decode any image file a dataset may hold into RGB uint8, in the frame COCO tools expect.

EXIF orientation is applied (COCO boxes refer to the upright image), and grayscale, palette, RGBA,
CMYK and 16-bit images all become 3-channel 8-bit arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # per-channel RGB statistics of ImageNet, on a 0..1 scale
IMAGENET_STD = [0.229, 0.224, 0.225]

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit
Image.MAX_IMAGE_PIXELS = None  # the limit is ours to apply, per call, before decoding


class ImageDecodeError(OSError):
    """An image that cannot be decoded; the message says which file and why."""


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max(initial=0)), 1e-12)
        gray = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def decode_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return the image at `path` as an upright H x W x 3 uint8 array, or raise ImageDecodeError."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageDecodeError(
                    f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb_uint8(upright)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{path}: not a recognised image file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{path}: cannot decode image: {e}") from None
