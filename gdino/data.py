"""What to label and with which vocabulary: image folders, COCO files, noun-chunk JSONL, ontologies.

Every image is an `Item` (dataset index, image id, file name, optional per-image prompts). Batches only
ever hold images of one size, so no image is padded next to a bigger one and its boxes do not depend
on what else was in the batch. An image that cannot be decoded becomes an error record, not a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from auto_label.coco import CocoFormatError, load_coco, resolve_image_path
from auto_label.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from gdino.errors import GDinoError
from gdino.prompts import sanitize_name, sanitize_names

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112


@dataclass
class Vocabulary:
    """Prompts sent to the model, the class each one stands for, and the output categories."""

    prompts: list[str]
    prompt_class: list[int]
    class_names: list[str]
    category_ids: list[int]
    categories: list[dict]  # output COCO categories (may hold categories that were not queried)
    grounding: bool = False  # noun-chunk mode: prompts differ per image


@dataclass
class Item:
    index: int
    image_id: int
    file_name: str
    path: Path
    size: tuple[int, int] | None  # (height, width) for batching; None when unknown
    prompts: tuple[int, ...] | None = None  # None: every prompt of the vocabulary
    caption: str | None = None


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of the upright image from its header alone; None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            return height, width
    except (OSError, ValueError, SyntaxError):
        return None


def find_images(image_dir: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All images under `image_dir`, recursively, extensions matched case-insensitively, sorted.

    A broken link is kept (it is then skipped and listed as a missing file, not silently dropped).
    """
    wanted = {e.lower() for e in extensions}
    return sorted(p for p in image_dir.rglob("*") if (p.is_file() or p.is_symlink()) and p.suffix.lower() in wanted)


def closed_vocabulary(class_names: Sequence[str]) -> Vocabulary:
    prompts = sanitize_names(class_names, "data.class_names")
    names = [n.strip() for n in class_names]
    return Vocabulary(
        prompts,
        list(range(len(prompts))),
        names,
        list(range(1, len(names) + 1)),
        [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    )


def ontology_vocabulary(path: Path) -> Vocabulary:
    """YAML mapping prompt -> class; several prompts (synonyms) may map to one class."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise GDinoError(f"data.ontology: cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not data:
        raise GDinoError(f"data.ontology: {path} must be a non-empty mapping of prompt -> class name")
    for prompt, name in data.items():
        if not isinstance(prompt, str) or not isinstance(name, str) or not name.strip():
            raise GDinoError(f"data.ontology: {path}: entry {prompt!r}: {name!r} must map a text to a class name")
    prompts = sanitize_names(list(data), f"{path}")
    names = list(dict.fromkeys(n.strip() for n in data.values()))
    prompt_class = [names.index(n.strip()) for n in data.values()]
    return Vocabulary(
        prompts,
        prompt_class,
        names,
        list(range(1, len(names) + 1)),
        [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    )


def match_categories(vocab: Vocabulary | None, categories: list[dict], source: Path) -> Vocabulary:
    """Query the COCO file's categories (all, or the ones named by the vocabulary), keeping their ids."""
    by_name = {}
    for category in categories:
        by_name.setdefault(sanitize_name(category["name"]), category)
    if vocab is None:
        prompts = sanitize_names([c["name"] for c in categories], f"{source} categories")
        return Vocabulary(
            prompts,
            list(range(len(prompts))),
            [c["name"] for c in categories],
            [c["id"] for c in categories],
            categories,
        )
    unknown = [n for n in vocab.class_names if sanitize_name(n) not in by_name]
    if unknown:
        available = ", ".join(repr(c["name"]) for c in categories[:30])
        raise GDinoError(f"class names {unknown} are not categories of {source} (it has {available})")
    matched = [by_name[sanitize_name(n)] for n in vocab.class_names]
    return Vocabulary(
        vocab.prompts,
        vocab.prompt_class,
        [c["name"] for c in matched],
        [c["id"] for c in matched],
        categories,
    )


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(location, record) per non-empty line; unreadable files and bad lines name the line."""
    try:
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GDinoError(f"{where}: invalid JSON: {e.msg}") from None
                if not isinstance(record, dict):
                    raise GDinoError(f"{where}: must be a JSON object")
                yield where, record
    except (OSError, UnicodeDecodeError) as e:
        raise GDinoError(f"data.noun_chunk_path: cannot read {path}: {e}") from None


def _checked_path(image_dir: Path, file_name: str, where: str, allow_outside: bool) -> Path:
    try:
        return resolve_image_path(image_dir, file_name, allow_outside)
    except CocoFormatError as e:
        raise GDinoError(f"{where}: field 'file_name': {e}") from None


def noun_chunk_items(path: Path, image_dir: Path, allow_outside: bool = False) -> tuple[list[Item], Vocabulary]:
    """TAO grounding input: one JSON line per image with `file_name` and `noun_chunks` (and `caption`)."""
    prompt_index: dict[str, int] = {}
    items = []
    for where, record in _jsonl_records(path):
        name, chunks = record.get("file_name"), record.get("noun_chunks")
        if not isinstance(name, str) or not name:
            raise GDinoError(f"{where}: field 'file_name' must be a non-empty string, got {name!r}")
        if not isinstance(chunks, list) or not chunks:
            raise GDinoError(f"{where}: field 'noun_chunks' must be a non-empty list, got {chunks!r}")
        phrases = dict.fromkeys(sanitize_names(chunks, f"{where}: noun_chunks"))
        ids = tuple(prompt_index.setdefault(phrase, len(prompt_index)) for phrase in phrases)
        image_path = _checked_path(image_dir, name, where, allow_outside)
        items.append(
            Item(
                len(items),
                len(items) + 1,
                name,
                image_path,
                header_size(image_path),
                ids,
                record.get("caption"),
            )
        )
    if not items:
        raise GDinoError(f"data.noun_chunk_path: {path} holds no records")
    phrases = list(prompt_index)
    vocab = Vocabulary(
        phrases,
        list(range(len(phrases))),
        phrases,
        list(range(1, len(phrases) + 1)),
        [{"id": i + 1, "name": p} for i, p in enumerate(phrases)],
        grounding=True,
    )
    return items, vocab


class LabelDataset(Dataset):
    def __init__(self, items: list[Item], max_pixels: int | None):
        self.items, self.max_pixels = items, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        record = {"item": item, "image": None, "error": None}
        try:
            record["image"] = decode_image(item.path, self.max_pixels)
        except ImageDecodeError as e:
            record["error"] = str(e)
        return record


def as_list(batch: list) -> list:
    """Collate that keeps the records as they are (images of one batch share a size by construction)."""
    return batch


class SizeGroupedBatchSampler(Sampler[list[int]]):
    """Batches of same-size images, in order of their first image; rank r takes batches r, r+W, ...

    No batch is padded with repeated images, so every image is labelled once. Images in `skip` (done
    by an interrupted earlier run) are left out of their batches; since a batch never mixes sizes, an
    image's boxes do not depend on which others share its batch.
    """

    def __init__(
        self,
        sizes: Sequence,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        skip: set[int] | frozenset = frozenset(),
    ):
        groups: dict = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size if size is not None else ("unknown", index), []).append(index)
        batches = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
        mine = sorted(batches, key=lambda b: b[0])[rank::world_size]
        self.batches = [kept for batch in mine if (kept := [i for i in batch if i not in skip])]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class GroundingDinoDataModule(L.LightningDataModule):
    """Images and vocabulary for labeling.

    Args:
        image_dir: folder searched recursively for images (or the root that COCO/JSONL file names are
            relative to; defaults to the COCO file's folder with ann_path).
        class_names: closed-set vocabulary, e.g. [person, car, "traffic light"].
        ann_path: existing COCO file: label its images, keep its image ids and category ids; class
            names (if given) must match its category names.
        noun_chunk_path: TAO grounding JSONL ({file_name, caption, noun_chunks} a line); the
            vocabulary is per image.
        ontology: YAML mapping prompt -> class name (synonyms map to one class).
        batch_size: images per batch (batches only hold images of one size).
        num_workers: DataLoader worker processes decoding images.
        max_pixels: refuse to decode images larger than this (decompression bombs).
        allow_outside_image_dir: accept file names (and links in image_dir) that lead outside the image
            folder; refused by default (`--allow-outside-image-dir`).
        strict: stop at the first image that cannot be read instead of skipping it and listing it in the
            errors file (`--strict`).
    """

    def __init__(
        self,
        image_dir: str | None = None,
        class_names: list[str] | None = None,
        ann_path: str | None = None,
        noun_chunk_path: str | None = None,
        ontology: str | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_outside_image_dir: bool = False,
        strict: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise GDinoError(f"data.batch_size: must be >= 1, got {batch_size}")
        if class_names is not None and not class_names:
            raise GDinoError("data.class_names: the list is empty; name at least one class")
        self.batch_size, self.num_workers, self.max_pixels = batch_size, num_workers, max_pixels
        self.strict = strict
        self.predict_skip: set[int] = set()  # item indices already labelled (set by a resuming writer)
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a rank may have no image left
        if class_names is not None and ontology is not None:
            raise GDinoError("data.class_names and data.ontology are two vocabularies: give one")
        if noun_chunk_path and (class_names or ontology or ann_path):
            raise GDinoError(
                "data.noun_chunk_path brings its own vocabulary: do not combine it with "
                "data.class_names, data.ontology or data.ann_path"
            )
        if not (class_names or ontology or noun_chunk_path or ann_path):
            raise GDinoError(
                "nothing to detect: give data.class_names, data.ontology, data.noun_chunk_path or data.ann_path"
            )
        root = Path(image_dir) if image_dir else None
        if noun_chunk_path:
            self.items, self.vocabulary = noun_chunk_items(
                Path(noun_chunk_path), self._dir(root), allow_outside_image_dir
            )
            return
        vocab = closed_vocabulary(class_names) if class_names else None
        if ontology:
            vocab = ontology_vocabulary(Path(ontology))
        if ann_path:
            coco = load_coco(
                ann_path,
                image_dir,
                check_image_files=False,  # a missing image is skipped and listed like an undecodable one
                require_annotations=False,
                allow_outside_image_dir=allow_outside_image_dir,
            )
            self.vocabulary = match_categories(vocab, coco.categories, Path(ann_path))
            self.items = [
                Item(i, im["id"], im["file_name"], coco.image_path(im), (im["height"], im["width"]))
                for i, im in enumerate(coco.images)
            ]
        else:
            root = self._dir(root)
            self.vocabulary = vocab
            paths = find_images(root)
            if not paths:
                raise GDinoError(f"data.image_dir: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
            names = [p.relative_to(root).as_posix() for p in paths]
            for name in names:  # a link to a file outside the folder is refused like a `../` file name
                _checked_path(root, name, f"data.image_dir: {root}", allow_outside_image_dir)
            self.items = [Item(i, i + 1, name, p, header_size(p)) for i, (name, p) in enumerate(zip(names, paths))]

    @staticmethod
    def _dir(root: Path | None) -> Path:
        if root is None:
            raise GDinoError("data.image_dir: required")
        if not root.is_dir():
            raise GDinoError(f"data.image_dir: {root} is not a directory")
        return root

    def predict_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = SizeGroupedBatchSampler(
            [it.size for it in self.items], self.batch_size, rank, world, self.predict_skip
        )
        return DataLoader(
            LabelDataset(self.items, self.max_pixels),
            batch_sampler=sampler,
            collate_fn=as_list,
            num_workers=self.num_workers,
        )
