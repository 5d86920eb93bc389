"""Load and validate COCO instance files.

Every problem is reported as one `CocoFormatError` naming the file, the record (list index and id) and
the field, so that a bad annotation file stops a run before any model work instead of failing hours in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from labelkit.jsonfile import read_json_object
from labelkit.masks import segmentation_problems

MAX_REPORTED_PROBLEMS = 20


class CocoFormatError(ValueError):
    """A COCO file that cannot be used; the message names file, record and field."""


COCO_HOLDS = "'images', 'annotations' and 'categories' lists"


def read_json(path: str | Path) -> dict:
    """Read a COCO file's JSON object (a byte-order mark accepted), I/O, encoding and syntax problems
    turned into one clear error."""
    return read_json_object(path, CocoFormatError, COCO_HOLDS)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite JSON number that a float can hold (JSON integers may be longer than any float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _record(section: str, index: int, record) -> str:
    if isinstance(record, dict) and "id" in record:
        return f"{section}[{index}] (id {record['id']!r})"
    return f"{section}[{index}]"


def _check_image(image) -> list[tuple[str, str]]:
    if not isinstance(image, dict):
        return [("", f"must be an object, got {type(image).__name__}")]
    problems = []
    if not _is_int(image.get("id")):
        problems.append(("id", f"must be an integer, got {image.get('id')!r}"))
    name = image.get("file_name")
    if not isinstance(name, str) or not name:
        problems.append(("file_name", f"must be a non-empty string, got {name!r}"))
    for key in ("width", "height"):
        value = image.get(key)
        if not _is_int(value) or value <= 0:
            problems.append((key, f"must be a positive integer, got {value!r}"))
    return problems


def _check_category(category) -> list[tuple[str, str]]:
    if not isinstance(category, dict):
        return [("", f"must be an object, got {type(category).__name__}")]
    problems = []
    if not _is_int(category.get("id")):
        problems.append(("id", f"must be an integer, got {category.get('id')!r}"))
    if not isinstance(category.get("name"), str):
        problems.append(("name", f"must be a string, got {category.get('name')!r}"))
    return problems


def _check_annotation(ann) -> list[tuple[str, str]]:
    if not isinstance(ann, dict):
        return [("", f"must be an object, got {type(ann).__name__}")]
    problems = []
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            problems.append((key, f"must be an integer, got {ann.get(key)!r}"))
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        n = len(bbox) if isinstance(bbox, list) else type(bbox).__name__
        problems.append(("bbox", f"must be a list of 4 numbers [x, y, width, height], got {n}"))
    elif not all(_is_number(v) for v in bbox):
        problems.append(("bbox", f"must hold 4 finite numbers, got {bbox!r}"))
    elif bbox[2] < 0 or bbox[3] < 0:
        problems.append(("bbox", f"width and height must not be negative, got {bbox!r}"))
    if ann.get("iscrowd", 0) not in (0, 1):
        problems.append(("iscrowd", f"must be 0 or 1, got {ann.get('iscrowd')!r}"))
    if "score" in ann and not _is_number(ann["score"]):
        problems.append(("score", f"must be a finite number, got {ann['score']!r}"))
    return problems


def validate_coco(data: dict, path: str | Path, require_annotations: bool = True) -> None:
    """Check structure, types, box sizes, unique ids, references and masks; raise one error listing problems.

    Every segmentation is checked against its image's size (see `segmentation_problems`), so that a bad
    mask stops any command when the file is loaded, not pycocotools' C code hours later.
    """
    problems: list[str] = []

    def add(where: str, fieldname: str, message: str) -> None:
        problems.append(f"{where}: field '{fieldname}': {message}" if fieldname else f"{where}: {message}")

    sections = ("images", "annotations", "categories") if require_annotations else ("images", "categories")
    for key in sections:
        if key not in data:
            raise CocoFormatError(f"{path}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{path}: top-level '{key}' must be a list, got {type(data[key]).__name__}")
    checks = {"images": _check_image, "categories": _check_category, "annotations": _check_annotation}
    for section in ("images", "categories", "annotations"):
        seen: dict[int, int] = {}
        for index, record in enumerate(data.get(section, [])):
            where = _record(section, index, record)
            for fieldname, message in checks[section](record):
                add(where, fieldname, message)
            rid = record.get("id") if isinstance(record, dict) else None
            if _is_int(rid):
                if rid in seen:
                    add(where, "id", f"duplicate id {rid} (first at {section}[{seen[rid]}])")
                seen.setdefault(rid, index)
        if problems:
            break
    if not problems:
        images = {im["id"]: im for im in data["images"]}
        category_ids = {c["id"] for c in data["categories"]}
        for index, ann in enumerate(data.get("annotations", [])):
            where = _record("annotations", index, ann)
            image = images.get(ann["image_id"])
            if image is None:
                add(where, "image_id", f"unknown image id {ann['image_id']}")
            else:
                for fieldname, message in segmentation_problems(
                    ann.get("segmentation"), image["height"], image["width"]
                ):
                    add(where, fieldname, message)
            if ann["category_id"] not in category_ids:
                add(where, "category_id", f"unknown category id {ann['category_id']}")
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise CocoFormatError(f"{path}: invalid COCO file:\n  " + "\n  ".join(shown) + tail)


def resolve_image_path(image_dir: str | Path, file_name: str, allow_outside: bool = False) -> Path:
    """Join `file_name` to `image_dir`, refusing names that escape the directory (../, absolute, links).

    Symbolic links are followed before the check, so a link inside the folder that points elsewhere is
    refused too: an annotation file must not make a labeler read (and copy into its outputs) any file
    on the machine unless the user said so.
    """
    root = Path(image_dir).resolve()
    path = (root / file_name).resolve()
    if not allow_outside and not path.is_relative_to(root):
        raise CocoFormatError(
            f"{file_name!r} points outside the image directory {root} (to {path}); "
            "pass --allow-outside-image-dir to allow that"
        )
    return path


@dataclass
class CocoFile:
    """A validated COCO file with its image directory and indexes for lookups."""

    path: Path
    data: dict
    image_dir: Path
    allow_outside: bool = False
    images_by_id: dict[int, dict] = field(init=False)
    categories_by_id: dict[int, dict] = field(init=False)
    annotation_indices_by_image: dict[int, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.images_by_id = {im["id"]: im for im in self.data["images"]}
        self.categories_by_id = {c["id"]: c for c in self.data["categories"]}
        self.annotation_indices_by_image = defaultdict(list)
        for index, ann in enumerate(self.data.get("annotations", [])):
            self.annotation_indices_by_image[ann["image_id"]].append(index)

    @property
    def images(self) -> list[dict]:
        return self.data["images"]

    @property
    def annotations(self) -> list[dict]:
        return self.data.get("annotations", [])

    @property
    def categories(self) -> list[dict]:
        return self.data["categories"]

    def image_path(self, image: dict) -> Path:
        return resolve_image_path(self.image_dir, image["file_name"], self.allow_outside)


def load_coco(
    path: str | Path,
    image_dir: str | Path | None = None,
    check_image_files: bool = True,
    require_annotations: bool = True,
    allow_outside_image_dir: bool = False,
    allow_missing_images: bool = False,
) -> CocoFile:
    """Read and validate a COCO file; `image_dir` defaults to the JSON's folder.

    Every `file_name` is checked against the image directory (see `resolve_image_path`). With
    `check_image_files`, the directory must exist and a missing image file is an error, unless
    `allow_missing_images`: then a labeler skips it and lists it with its reason, like an undecodable
    one, and only a file naming no existing image at all (a wrong directory, surely) is an error.
    """
    path = Path(path)
    data = read_json(path)
    validate_coco(data, path, require_annotations=require_annotations)
    coco = CocoFile(
        path=path,
        data=data,
        image_dir=Path(image_dir) if image_dir else path.parent,
        allow_outside=allow_outside_image_dir,
    )
    if check_image_files and not coco.image_dir.is_dir():
        raise CocoFormatError(f"{path}: image directory {coco.image_dir} does not exist")
    missing = []
    for index, image in enumerate(coco.images):
        where = f"{_record('images', index, image)}: field 'file_name'"
        try:
            image_path = coco.image_path(image)
        except CocoFormatError as e:
            raise CocoFormatError(f"{path}: {where}: {e}") from None
        if check_image_files and not image_path.is_file():
            missing.append(f"{where}: {image_path} not found")
    if missing and (not allow_missing_images or len(missing) == len(coco.images)):
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        which = "none of the image files exist" if len(missing) == len(coco.images) else "image files missing"
        raise CocoFormatError(
            f"{path}: {which} (image directory {coco.image_dir}):\n  " + "\n  ".join(missing[:5]) + more
        )
    return coco
