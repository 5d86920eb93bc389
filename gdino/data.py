"""What to label and with which vocabulary: image folders, COCO files, noun-chunk JSONL, ontologies.

Every image is an `Item` (dataset index, image id, file name, optional per-image prompts). Batches only
ever hold images of one size, so no image is padded next to a bigger one and its boxes do not depend
on what else was in the batch. An image that cannot be decoded, or whose file name cannot be written
into a COCO file, becomes an error record, not a crash; a file of a folder that is not taken as an
image is counted and listed, never silently left out.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import yaml
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, Sampler

from gdino.errors import GDinoError
from gdino.prompts import sanitize_each, sanitize_name, sanitize_names, warn_list_like
from labelkit.coco import CocoFormatError, load_coco, resolve_image_path
from labelkit.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from labelkit.jsonfile import read_jsonl_objects

_EXIF_ORIENTATION = 0x0112
_SIZE_ONLY_FORMATS = {"MPEG"}  # Pillow reads their size but has no decoder for their pixels
_OPENED_AS_JPEG = {"MPO"}  # multi-picture JPEG (camera files): the JPEG plugin opens them
log = logging.getLogger(__name__)


def decodable_extensions() -> tuple[str, ...]:
    """The file extensions of every format this Pillow decodes, lower-case and sorted.

    Folders are searched by extension, not by opening every file: formats without a magic number (TGA)
    would take stray binary files for images. Stub formats (HDF5, GRIB, BUFR, WMF) are left out: they
    need a decoder plugin of their own.
    """
    Image.init()
    decodable = {
        name
        for name, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    } - _SIZE_ONLY_FORMATS | _OPENED_AS_JPEG
    return tuple(sorted(ext for ext, name in Image.registered_extensions().items() if name in decodable))


IMAGE_EXTENSIONS = decodable_extensions()


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
    error: str | None = None  # known before decoding: the item becomes an error record


@dataclass
class FolderScan:
    """The files of one or more image folders, named relative to their common root."""

    root: Path
    images: list[tuple[str, Path, str]] = field(default_factory=list)  # (file name, folder, name in it), sorted
    left_out: list[str] = field(default_factory=list)  # printable names of the files that are not images


def image_folders(image_dir: str | os.PathLike | Sequence | None) -> list[Path]:
    """`data.image_dir` as a list of folders: TAO's spec gives a list, the command line usually one."""
    if image_dir is None or image_dir == "":
        return []
    if isinstance(image_dir, (str, os.PathLike)):
        return [Path(image_dir)]
    if not isinstance(image_dir, Sequence):
        raise GDinoError(f"data.image_dir: must be a folder or a list of folders, got {image_dir!r}")
    folders = list(image_dir)
    if not folders:
        raise GDinoError("data.image_dir: the list of folders is empty")
    for index, folder in enumerate(folders):
        if not isinstance(folder, (str, os.PathLike)) or folder == "":
            raise GDinoError(f"data.image_dir[{index}]: must be a folder path, got {folder!r}")
    return [Path(folder) for folder in folders]


def common_root(folders: Sequence[Path]) -> Path:
    """The folder that output file names are relative to: the folder itself, or the folders' deepest
    common parent, so that names stay unique across folders and lead to the files from there."""
    if len(folders) == 1:
        return folders[0]
    try:
        return Path(os.path.commonpath([os.path.abspath(f) for f in folders]))
    except ValueError:  # Windows folders on different drives
        raise GDinoError(f"data.image_dir: the folders {[str(f) for f in folders]} share no common parent") from None


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


def find_images(folders: Sequence[Path], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> FolderScan:
    """All files under the folders, recursively: images by extension (matched case-insensitively), the
    rest left out. Names are relative to the folders' common root; a file found through two of the
    folders (one inside the other) is listed once.

    A broken link is kept (it is then skipped and listed as a missing file, not silently dropped).
    """
    scan = FolderScan(common_root(folders))
    wanted = {e.lower() for e in extensions}
    images, left_out = {}, set()
    for folder in folders:
        base = scan.root if len(folders) == 1 else Path(os.path.abspath(folder))
        for path in base.rglob("*"):
            if path.is_dir():
                continue
            name = path.relative_to(scan.root).as_posix()
            if (path.is_file() or path.is_symlink()) and path.suffix.lower() in wanted:
                images[name] = (base, path.relative_to(base).as_posix())
            else:
                left_out.add(printable_name(name))
    scan.images = [(name, *images[name]) for name in sorted(images)]
    scan.left_out = sorted(left_out)
    return scan


def unwritable_name(file_name: str) -> str | None:
    """Why `file_name` cannot be a COCO file name (None if it can): JSON text is UTF-8, and a name that
    is not (an old Latin-1 or Shift-JIS archive) reaches Python with undecodable bytes kept as surrogates."""
    try:
        file_name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not UTF-8 text, which COCO and JSON file names must be; rename the file"
    return None


def printable_name(file_name: str) -> str:
    """`file_name` with each byte that is not UTF-8 shown as \\xNN, for messages and error records."""
    return os.fsencode(file_name).decode("utf-8", "backslashreplace")


def folder_items(scan: FolderScan, allow_outside: bool) -> list[Item]:
    """One item per image of a folder scan; a name that cannot be written out makes an error item."""
    items = []
    for index, (name, folder, inner) in enumerate(scan.images):
        # a link to a file outside its folder is refused like a `../` file name
        _checked_path(folder, inner, f"data.image_dir: {folder}", allow_outside)
        path = folder / inner
        error = unwritable_name(name)
        shown = printable_name(name) if error else name
        items.append(Item(index, index + 1, shown, path, None if error else header_size(path), error=error))
    return items


def log_left_out(scan: FolderScan) -> None:
    """Say how many files of the folders are not taken as images, by extension, and name a few."""
    if not scan.left_out:
        return
    kinds = Counter(Path(name).suffix.lower() or "(none)" for name in scan.left_out)
    log.warning(
        "data.image_dir: %d files under %s are not images by extension and are left out (%s), e.g. %s; "
        "they are listed in the errors file. Image extensions: every format Pillow decodes (%s, ...)",
        len(scan.left_out),
        scan.root,
        ", ".join(f"{n} {ext}" for ext, n in kinds.most_common()),
        ", ".join(scan.left_out[:3]),
        ", ".join(IMAGE_EXTENSIONS[:8]),
    )


def closed_vocabulary(class_names: Sequence[str]) -> Vocabulary:
    prompts = sanitize_names(class_names, "data.class_names")
    warn_list_like(class_names, "data.class_names")
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
    warn_list_like(list(data), f"{path}")
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


def _checked_path(image_dir: Path, file_name: str, where: str, allow_outside: bool) -> Path:
    try:
        return resolve_image_path(image_dir, file_name, allow_outside)
    except CocoFormatError as e:
        raise GDinoError(f"{where}: field 'file_name': {e}") from None


def noun_chunk_items(path: Path, image_dir: Path, allow_outside: bool = False) -> tuple[list[Item], Vocabulary]:
    """TAO grounding input: one JSON line per image with `file_name` and `noun_chunks` (and `caption`).

    A caption names the same thing more than once ("A bowl next to a bowl of soup"): chunks of one line
    that read the same once sanitised are one phrase, asked once.
    """
    prompt_index: dict[str, int] = {}
    items = []
    repeated = []
    for where, record in read_jsonl_objects(path, GDinoError, "file_name and noun_chunks"):
        name, chunks = record.get("file_name"), record.get("noun_chunks")
        if not isinstance(name, str) or not name:
            raise GDinoError(f"{where}: field 'file_name' must be a non-empty string, got {name!r}")
        if not isinstance(chunks, list) or not chunks:
            raise GDinoError(f"{where}: field 'noun_chunks' must be a non-empty list, got {chunks!r}")
        cleaned = sanitize_each(chunks, f"{where}: noun_chunks")
        phrases = dict.fromkeys(cleaned)
        if len(phrases) < len(cleaned):
            repeated.append(where)
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
    if repeated:
        log.info(
            "%d lines of %s repeat a noun chunk (e.g. %s); each repeated chunk is asked once",
            len(repeated),
            path,
            repeated[0].rsplit(": ", 1)[-1],
        )
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
        record = {"item": item, "image": None, "error": item.error}
        if item.error is not None:
            return record
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
        image_dir: folder searched recursively for images, or a list of folders labelled as one set
            (TAO's form); output file names are relative to the folders' deepest common parent
            (`image_root`), so they stay unique and lead to the files. Images are the files with the
            extension of a format Pillow decodes (IMAGE_EXTENSIONS); every other file is counted and
            listed in the errors file. With ann_path or noun_chunk_path: the one folder their file names
            are relative to (default with ann_path: the COCO file's folder).
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
        image_dir: str | list[str] | None = None,
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
        folders = image_folders(image_dir)
        self.left_out: list[str] = []  # files of the image folders not taken as images
        if noun_chunk_path:
            self._one_dir(folders, "data.noun_chunk_path")
            self.image_root = self._dirs(folders)[0]  # what the output file names are relative to
            self.items, self.vocabulary = noun_chunk_items(
                Path(noun_chunk_path), self.image_root, allow_outside_image_dir
            )
            return
        vocab = closed_vocabulary(class_names) if class_names else None
        if ontology:
            vocab = ontology_vocabulary(Path(ontology))
        if ann_path:
            coco = load_coco(
                ann_path,
                self._one_dir(folders, "data.ann_path"),
                check_image_files=False,  # a missing image is skipped and listed like an undecodable one
                require_annotations=False,
                allow_outside_image_dir=allow_outside_image_dir,
            )
            self.image_root = coco.image_dir
            self.vocabulary = match_categories(vocab, coco.categories, Path(ann_path))
            self.items = [
                Item(i, im["id"], im["file_name"], coco.image_path(im), (im["height"], im["width"]))
                for i, im in enumerate(coco.images)
            ]
        else:
            scan = find_images(self._dirs(folders))
            self.image_root, self.vocabulary, self.left_out = scan.root, vocab, scan.left_out
            if not scan.images:
                raise GDinoError(
                    f"data.image_dir: no image files under {scan.root} ({len(scan.left_out)} other files; "
                    f"image extensions: {', '.join(IMAGE_EXTENSIONS)})"
                )
            log_left_out(scan)
            self.items = folder_items(scan, allow_outside_image_dir)

    @staticmethod
    def _dirs(folders: list[Path]) -> list[Path]:
        if not folders:
            raise GDinoError("data.image_dir: required")
        for index, folder in enumerate(folders):
            if not folder.is_dir():
                where = "data.image_dir" if len(folders) == 1 else f"data.image_dir[{index}]"
                raise GDinoError(f"{where}: {folder} is not a directory")
        return folders

    @staticmethod
    def _one_dir(folders: list[Path], option: str) -> Path | None:
        """The one folder that the file names of a COCO or JSONL file are relative to (None: not given)."""
        if len(folders) > 1:
            raise GDinoError(
                f"data.image_dir: {option} names its files relative to one folder, but {len(folders)} folders "
                "are given; give the folder its file names start from (e.g. the folders' common parent)"
            )
        return folders[0] if folders else None

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
