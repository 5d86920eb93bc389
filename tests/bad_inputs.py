"""A corpus of bad inputs, generated on the fly (no committed binaries), and ways to run each command.

- `MALFORMED_COCO`: broken annotation files, each with the words its error message must contain.
- `write_bad_images`: every kind of image file a long run meets (missing, empty, truncated, not an
  image, CMYK, 16-bit, RGBA, grayscale, EXIF-rotated, 1x1, over the pixel limit), plus a COCO file
  with one box on each.
- `CROWD_ANNOTATION`: a crowd region (RLE over a whole 96x128 image), which labelers pass through untouched.
- `run_command`: run `mal`, `gdino` or `auto_label` in-process as from a shell: (exit code, stderr).
- `run_module`: the same in a real process (`python -m ...`), for what only a process shows (tracebacks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from conftest import REPO
from PIL import Image

PIXEL_LIMIT = 1_000_000  # the bomb below has 4 million pixels


def _edit(change: Callable[[dict], None]) -> Callable[[dict], bytes]:
    def make(data: dict) -> bytes:
        data = json.loads(json.dumps(data))
        change(data)
        return json.dumps(data).encode()

    return make


def _set(section: str, index: int, key: str, value) -> Callable[[dict], bytes]:
    return _edit(lambda d: d[section][index].__setitem__(key, value))


def _drop(key: str) -> Callable[[dict], bytes]:
    return _edit(lambda d: d.pop(key))


def _duplicate(section: str) -> Callable[[dict], bytes]:
    return _edit(lambda d: d[section].append(dict(d[section][0])))


# name -> (make the bad bytes from a valid COCO dict, words the message must hold besides the file name)
MALFORMED_COCO: dict[str, tuple[Callable[[dict], bytes], list[str]]] = {
    "invalid_json": (lambda d: json.dumps(d).encode().replace(b'"images":', b'"images"', 1), ["invalid JSON at line"]),
    "truncated_file": (lambda d: json.dumps(d).encode()[:-40], ["invalid JSON at line"]),
    "non_utf8": (lambda d: json.dumps(d).encode().replace(b'"file_name": "', b'"file_name": "\xff', 1), ["not UTF-8"]),
    "missing_images": (_drop("images"), ["missing top-level key 'images'"]),
    "missing_annotations": (_drop("annotations"), ["missing top-level key 'annotations'"]),
    "missing_categories": (_drop("categories"), ["missing top-level key 'categories'"]),
    "wrong_type": (_set("images", 0, "width", "96"), ["images[0] (id 1)", "field 'width'"]),
    "bbox_3_numbers": (_set("annotations", 0, "bbox", [1, 2, 3]), ["annotations[0] (id 1)", "field 'bbox'"]),
    "bbox_nan": (_set("annotations", 0, "bbox", [1, 2, float("nan"), 3]), ["annotations[0] (id 1)", "finite"]),
    "bbox_negative_width": (_set("annotations", 0, "bbox", [1, 2, -3, 4]), ["annotations[0] (id 1)", "negative"]),
    "duplicate_image_id": (_duplicate("images"), ["field 'id': duplicate id 1"]),
    "duplicate_annotation_id": (_duplicate("annotations"), ["field 'id': duplicate id 1"]),
    "unknown_image": (_set("annotations", 0, "image_id", 999), ["annotations[0] (id 1)", "unknown image id 999"]),
    "unknown_category": (_set("annotations", 0, "category_id", 999), ["annotations[0] (id 1)", "unknown category"]),
}


def _jpeg(path: Path, array: np.ndarray, **kwargs) -> None:
    Image.fromarray(array).save(path, quality=95, **kwargs)


def write_bad_images(directory: Path) -> tuple[Path, dict[str, str | None]]:
    """Write the image corpus and a COCO file with one box per image (+ a missing file).

    Returns the COCO path and, per file name, None when the image must be labelled or a word of the
    reason it must be skipped for. Boxes and sizes are given in the upright frame, as COCO tools use.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    _jpeg(directory / "good.jpg", rgb)
    (directory / "zero_bytes.jpg").write_bytes(b"")
    (directory / "truncated.jpg").write_bytes((directory / "good.jpg").read_bytes()[:300])
    (directory / "not_an_image.jpg").write_text("these are not the pixels you are looking for")
    Image.fromarray(rgb).convert("CMYK").save(directory / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (96, 128))).astype(np.uint16)).save(directory / "gray16.png")
    Image.fromarray(np.dstack([rgb, np.full((96, 128), 128, np.uint8)])).save(directory / "rgba.png")
    Image.fromarray(rgb[:, :, 0]).save(directory / "gray.png")
    exif = Image.Image().getexif()
    exif[0x0112] = 6  # stored 128 wide x 96 high, shown rotated 90 degrees clockwise: 96 wide x 128 high
    _jpeg(directory / "exif_rotated.jpg", rgb, exif=exif)
    Image.fromarray(rgb[:1, :1]).save(directory / "one_pixel.png")
    Image.new("L", (2000, 2000)).save(directory / "bomb.png")
    expected = {
        "good.jpg": None,
        "missing.jpg": "not found",
        "zero_bytes.jpg": "not a recognised image",
        "truncated.jpg": "cannot decode",
        "not_an_image.jpg": "not a recognised image",
        "cmyk.jpg": None,
        "gray16.png": None,
        "rgba.png": None,
        "gray.png": None,
        "exif_rotated.jpg": None,
        "one_pixel.png": None,
        "bomb.png": "exceeds the limit",
    }
    sizes = {"exif_rotated.jpg": (96, 128), "one_pixel.png": (1, 1), "bomb.png": (2000, 2000)}  # (width, height)
    images, annotations = [], []
    for image_id, name in enumerate(expected, start=1):
        width, height = sizes.get(name, (128, 96))
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        bbox = [0, 0, 1, 1] if name == "one_pixel.png" else [10, 20, min(width, 60), min(height, 50)]
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "iscrowd": 0})
    path = directory / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return path, expected


CROWD_ANNOTATION = {
    "id": 10,
    "image_id": 1,
    "category_id": 1,
    "bbox": [5, 5, 20, 20],
    "iscrowd": 1,
    "segmentation": {"size": [96, 128], "counts": [0, 96 * 128]},
    "area": 96 * 128,
}


def run_module(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m <argv>` in a real process from the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def run_command(main: Callable[[], object], argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """Run a command's `main()` with `argv` as the command line; (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    return int(code or 0), capsys.readouterr().err
