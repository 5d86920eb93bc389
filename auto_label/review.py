"""The review report: one static HTML page on which a person checks a labeling run.

`write_review` reads a labels file (COCO, as MAL, SAM, Grounding DINO and text2mask write it) with its
images and writes `index.html` into a folder, with everything it shows beside it: the run summary (from the
run's report when there is one), per-class counts, score histograms (matplotlib PNGs), and a gallery of the
labels most likely wrong first: lowest `mal_score` / `sam_score` / `score`, or lowest IoU with the ground
truth when one is given. Each gallery card is a close-up of one label (thumbs/), linking to the overlay of
its whole image (overlays/). The gallery is paged by a small inline script over `items.js`, with only the
current page's images in the page and loaded lazily, so that a 10k-image run opens at once; no server, no
network, no file outside the folder.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from urllib.parse import quote

import numpy as np
from pycocotools import mask as mask_utils

from auto_label.review_page import PAGE
from labelkit.coco import CocoFile, CocoFormatError, load_coco
from labelkit.images import ImageDecodeError, decode_image
from labelkit.jsonfile import read_json_object, read_jsonl_objects
from labelkit.masks import instance_rle, segmentation_to_mask, segmentation_to_rle
from labelkit.visualize import color, draw_overlay, label_thumbnail, overlay_path, resize_image, resize_mask, save_rgb
from labelkit.writers import atomic_write

# The labelers' confidence fields, in the order the default sort prefers: a mask labeler's own score first
# (text2mask files hold both MAL's `mal_score` and Grounding DINO's box `score`).
SCORE_FIELDS = ("mal_score", "sam_score", "score")
FLAG_FIELDS = ("mal_flag", "sam_flag")
IOU = "iou"  # the best IoU of a label with a ground-truth instance of its class, with --gt
DEFAULT_MAX_LABELS = 5000  # gallery cards, the most likely wrong ones: what a person can look through
PAGE_SIZE = 60
THUMB_SIDE = 160
OVERLAY_SIDE = 1024  # overlays are for looking at, not for measuring: big images are brought down
THUMB_QUALITY, OVERLAY_QUALITY = 85, 80  # a 10k-image run: ~6 kB a close-up, ~60 kB an overlay
MAX_STACKED_CLASSES = 10  # histograms stack the classes up to this many, else show all labels as one


@dataclass
class Item:
    """One label of the file: the annotation at `index`, its image and class, its scores (and IoU)."""

    index: int
    ann: dict
    image: dict
    category: str
    scores: dict[str, float]
    flag: str | None
    error: str | None = None  # why its image could not be shown

    @property
    def has_mask(self) -> bool:
        return bool(self.ann.get("segmentation")) and self.ann.get("area", 0) > 0


@dataclass
class Review:
    """What the page shows, gathered before anything is drawn."""

    coco: CocoFile
    items: list[Item]
    keys: list[str]  # the score fields present, IoU last
    skipped: list[dict]
    report: dict | None
    gt_path: str | None = None
    shown: list[Item] = field(default_factory=list)

    def by_class(self) -> dict[str, list[Item]]:
        """Every class of the file (in its order), with its labels."""
        groups: dict[str, list[Item]] = {c["name"]: [] for c in self.coco.categories}
        for item in self.items:
            groups[item.category].append(item)
        return groups

    @property
    def sort_key(self) -> str:
        """IoU when there is ground truth, else the first score field present (SCORE_FIELDS' order)."""
        return IOU if IOU in self.keys else (self.keys[0] if self.keys else "")


def collect_items(coco: CocoFile) -> list[Item]:
    """Every label of the file; crowd regions are no labels (MAL passes them through)."""
    items = []
    for index, ann in enumerate(coco.annotations):
        if ann.get("iscrowd", 0):
            continue
        scores = {k: float(ann[k]) for k in SCORE_FIELDS if isinstance(ann.get(k), (int, float))}
        flag = next((ann[k] for k in FLAG_FIELDS if ann.get(k)), None)
        category = coco.categories_by_id[ann["category_id"]]["name"]
        items.append(Item(index, ann, coco.images_by_id[ann["image_id"]], category, scores, flag))
    return items


def _truth_by_image_and_class(gt: CocoFile) -> dict[tuple[str, str], list[tuple[list, dict | None]]]:
    """(file name, class name) -> [(box, mask RLE or None)] of the ground truth's instances. Images are
    matched by file name and classes by name: Grounding DINO numbers both its own way."""
    truth: dict[tuple[str, str], list] = {}
    for ann in gt.annotations:
        if ann.get("iscrowd", 0):
            continue
        image = gt.images_by_id[ann["image_id"]]
        rle, _ = instance_rle(ann.get("segmentation"), image["height"], image["width"])
        key = (image["file_name"], gt.categories_by_id[ann["category_id"]]["name"])
        truth.setdefault(key, []).append((ann["bbox"], rle))
    return truth


def best_iou(item: Item, candidates: list[tuple[list, dict | None]]) -> float:
    """The label's best IoU with a ground-truth instance of its class on its image: mask IoU where both
    have masks, box IoU otherwise; 0 where there is none (a label of nothing)."""
    label_rle = None
    if item.ann.get("segmentation"):
        label_rle = segmentation_to_rle(item.ann["segmentation"], item.image["height"], item.image["width"])
    ious = [0.0]
    masked = [rle for _, rle in candidates if rle is not None and label_rle is not None]
    if masked:
        ious += mask_utils.iou([label_rle], masked, [0] * len(masked))[0].tolist()
    boxed = [box for box, rle in candidates if rle is None or label_rle is None]
    if boxed:
        ious += mask_utils.iou([item.ann["bbox"]], boxed, [0] * len(boxed))[0].tolist()
    return round(max(ious), 4)


def add_ious(items: list[Item], gt_path: str | Path) -> None:
    # only its records are read, never its images: their names may point anywhere
    gt = load_coco(gt_path, check_image_files=False, require_annotations=False, allow_outside_image_dir=True)
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in gt.images}
    truth = _truth_by_image_and_class(gt)
    for item in items:
        image = item.image
        size = sizes.get(image["file_name"])
        if size is not None and size != (image["width"], image["height"]):
            raise CocoFormatError(
                f"{gt_path}: {image['file_name']} is {size[0]}x{size[1]}, but the labels say "
                f"{image['width']}x{image['height']}"
            )
        item.scores[IOU] = best_iou(item, truth.get((image["file_name"], item.category), []))


def skipped_items(labels_path: Path, report: dict | None) -> list[dict]:
    """The images the run skipped, with why: from the report, else from the error list the labeler wrote
    beside its labels (MAL and SAM: errors.jsonl; Grounding DINO and SAM 3: <labels stem>.errors.jsonl)."""
    if report is not None:
        return report["skipped"]
    skipped = []
    for path in (labels_path.with_name("errors.jsonl"), labels_path.with_name(f"{labels_path.stem}.errors.jsonl")):
        if path.is_file():
            for _, record in read_jsonl_objects(path, CocoFormatError, "a file_name and a reason"):
                skipped.append(
                    {"file_name": record.get("file_name"), "reason": record.get("reason", record.get("error"))}
                )
    return skipped


def find_report(labels_path: str | Path) -> dict | None:
    """The report.json of the run that wrote `labels_path`: beside it (mal, grounding_dino) or a folder up
    (text2mask's stage folders), and naming a file of that name in a folder of that name among its outputs."""
    labels = Path(labels_path).resolve()
    for folder in (labels.parent, labels.parent.parent):
        path = folder / "report.json"
        if path.is_file():
            report = read_json_object(path, CocoFormatError, "a run report")
            if any(Path(str(out)).parts[-2:] == labels.parts[-2:] for out in report.get("outputs", {}).values()):
                return report
    return None


def gather(
    labels_path: Path, image_dir, report: dict | None, gt_path, max_labels: int, allow_outside_image_dir: bool = False
) -> Review:
    coco = load_coco(
        labels_path,
        image_dir,
        require_annotations=False,
        allow_missing_images=True,
        allow_outside_image_dir=allow_outside_image_dir,
    )
    items = collect_items(coco)
    if gt_path is not None:
        add_ious(items, gt_path)
    present = {k for item in items for k in item.scores}
    keys = [k for k in (*SCORE_FIELDS, IOU) if k in present]
    review = Review(coco, items, keys, skipped_items(labels_path, report), report, str(gt_path) if gt_path else None)
    key = review.sort_key
    ranked = sorted(items, key=lambda it: (key not in it.scores, it.scores.get(key, 0.0), it.index))
    review.shown = ranked[:max_labels]
    return review


# ---- pictures ----------------------------------------------------------------------------------------


def class_colors(coco: CocoFile) -> dict[str, tuple[int, int, int]]:
    """One colour per class, the same in every picture and in the page."""
    return {c["name"]: color(i) for i, c in enumerate(coco.categories)}


def thumb_path(out_dir: Path, item: Item) -> Path:
    return out_dir / "thumbs" / f"{item.index}.jpg"


def caption(item: Item) -> str:
    score = next((f" {item.scores[k]:.2f}" for k in SCORE_FIELDS if k in item.scores), "")
    return f"{item.category}{score}"


def render_image(image_path: Path, labels: list[Item], shown: set[int], out_dir: Path, colors: dict) -> str | None:
    """Write the overlay of one image (all its labels) and the close-ups of its shown labels; returns why
    the image could not be read, if it could not. Each mask is decoded at full size once and brought down
    at once, so that an image with many large masks does not hold them all."""
    image = labels[0].image
    try:
        pixels = decode_image(image_path)
    except ImageDecodeError as e:
        return str(e)
    if pixels.shape[:2] != (image["height"], image["width"]):
        actual = f"{pixels.shape[1]}x{pixels.shape[0]}"
        return f"{image['file_name']} is {actual}, but the labels say {image['width']}x{image['height']}"
    small = resize_image(pixels, min(1.0, OVERLAY_SIDE / max(pixels.shape[:2])))
    scale = small.shape[1] / pixels.shape[1]
    small_masks = []
    for item in labels:
        mask = segmentation_to_mask(item.ann["segmentation"], *pixels.shape[:2]) if item.has_mask else None
        if item.index in shown:
            thumb = label_thumbnail(pixels, mask, item.ann["bbox"], colors[item.category], THUMB_SIDE)
            save_rgb(thumb_path(out_dir, item), thumb, THUMB_QUALITY)
        small_masks.append(None if mask is None else resize_mask(mask, small))
    boxes = [[v * scale for v in item.ann["bbox"]] for item in labels]
    overlay = draw_overlay(
        small, small_masks, boxes, [caption(it) for it in labels], colors=[colors[it.category] for it in labels]
    )
    path = overlay_path(out_dir / "overlays", image["file_name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_rgb(path, overlay, OVERLAY_QUALITY)
    return None


def render_pictures(review: Review, out_dir: Path, workers: int | None) -> None:
    """Overlays and close-ups of the images with a shown label, in threads (decoding, drawing and JPEG
    encoding release the GIL); an unreadable image marks its labels with why."""
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    shown = {item.index for item in review.shown}
    by_image: dict[int, list[Item]] = {}
    for item in review.items:
        by_image.setdefault(item.image["id"], []).append(item)
    wanted = list(dict.fromkeys(item.image["id"] for item in review.shown))
    colors = class_colors(review.coco)

    def job(image_id: int) -> str | None:
        labels = by_image[image_id]
        return render_image(review.coco.image_path(labels[0].image), labels, shown, out_dir, colors)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for image_id, error in zip(wanted, pool.map(job, wanted)):
            for item in by_image[image_id]:
                item.error = error


def write_histograms(review: Review, out_dir: Path) -> list[str]:
    """One PNG per score field (and IoU), every label counted, stacked by class when there are few."""
    from matplotlib.figure import Figure  # a third of a second: not for `auto_label --help`

    folder = out_dir / "histograms"
    folder.mkdir(parents=True, exist_ok=True)
    colors = class_colors(review.coco)
    groups = review.by_class()
    names = []
    for key in review.keys:
        per_class = {c: [it.scores[key] for it in items if key in it.scores] for c, items in groups.items()}
        values = np.clip(np.concatenate([np.asarray(v, dtype=float) for v in per_class.values()]), 0, 1)
        figure = Figure(figsize=(5.4, 3.0), dpi=100)
        axes = figure.subplots()
        if len(groups) <= MAX_STACKED_CLASSES:
            used = [(c, np.clip(v, 0, 1)) for c, v in per_class.items() if v]
            rgb = [tuple(x / 255 for x in colors[c]) for c, _ in used]
            axes.hist([v for _, v in used], bins=20, range=(0, 1), stacked=True, color=rgb, label=[c for c, _ in used])
            axes.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            axes.hist(values, bins=20, range=(0, 1), color="#4a78c2")
        axes.set_xlabel(key)
        axes.set_ylabel("labels")
        axes.set_title(f"{key}: {len(values)} labels, median {np.median(values):.2f}", fontsize=10)
        figure.tight_layout()
        figure.savefig(folder / f"{key}.png")
        names.append(f"histograms/{key}.png")
    return names


# ---- the page ----------------------------------------------------------------------------------------


def url(path: Path, out_dir: Path) -> str:
    """A link relative to the page, safe for any file name (spaces, #, ?, non-ASCII)."""
    return quote(path.relative_to(out_dir).as_posix())


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def _rate(value: float | None) -> str:
    """Three significant digits, without an exponent (a run with nothing to do has no rate)."""
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _mib(value) -> str:
    return f"{value / 2**20:,.0f} MiB"


def summary_stats(review: Review) -> list[tuple[str, str, str]]:
    """(key, label, value) of the run summary: counts from the report when there is one (they include
    what this file cannot tell, e.g. text2mask's boxes), else from the file; speed and memory only there."""
    report = review.report
    skipped_names = {s["file_name"] for s in review.skipped}
    if report is not None:
        counts = report["counts"]
        images, boxes, masks = counts["images"], counts["boxes"], counts["masks"]
    else:
        images = sum(1 for im in review.coco.images if im["file_name"] not in skipped_names)
        boxes, masks = len(review.items), sum(item.has_mask for item in review.items)
    stats = [
        ("images", "images labelled", f"{images:,}"),
        ("boxes", "boxes", f"{boxes:,}"),
        ("masks", "masks", f"{masks:,}"),
        ("skipped", "images skipped", f"{len(review.skipped):,}"),
    ]
    if report is None:
        return stats + [("throughput", "throughput", "not recorded (no run report)")]
    where = plural(report["processes"], f"{report['accelerator']} process", f"{report['accelerator']} processes")
    memory = report["peak_memory"]
    peak = _mib(memory["cpu_rss_bytes"]) + (
        f" (GPU {_mib(memory['gpu_allocated_bytes'])})" if "gpu_allocated_bytes" in memory else ""
    )
    speed = f"{_rate(report['images_per_s'])} images/s, {_rate(report['boxes_per_s'])} boxes/s"
    return stats + [
        ("throughput", "throughput", speed),
        ("wall_time", "wall time", f"{report['wall_time_s']:,.1f} s on {where}"),
        ("peak_memory", "peak memory", peak),
    ]


def kind_of(review: Review) -> str:
    """What made the labels: the run's type from its report, else told by the score fields."""
    if review.report is not None:
        return review.report["autolabel_type"]
    keys = set(review.keys)
    if "sam_score" in keys:
        return "SAM masks"
    if "mal_score" in keys:
        return "text2mask" if "score" in keys else "MAL masks"
    return "Grounding DINO boxes" if "score" in keys else "labels"


def class_rows(review: Review) -> list[dict]:
    rows = []
    for name, items in review.by_class().items():
        means = {}
        for key in review.keys:
            values = [it.scores[key] for it in items if key in it.scores]
            means[key] = f"{np.mean(values):.3f}" if values else "–"
        rows.append(
            {
                "name": name,
                "labels": len(items),
                "masks": sum(it.has_mask for it in items),
                "flagged": sum(it.flag is not None for it in items),
                "means": means,
            }
        )
    return rows


def _swatch(rgb) -> str:
    return f'<span class="swatch" style="background:rgb{tuple(rgb)}"></span>'


def stats_html(review: Review) -> str:
    return "\n".join(
        f'<div class="stat" data-stat="{key}"><dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd></div>'
        for key, label, value in summary_stats(review)
    )


def skipped_html(review: Review) -> str:
    if not review.skipped:
        return "<p>No image was skipped.</p>"
    rows = "\n".join(
        f"<tr><td>{html.escape(str(s.get('file_name')))}</td><td>{html.escape(str(s.get('reason')))}</td></tr>"
        for s in review.skipped
    )
    return (
        f"<details><summary>{plural(len(review.skipped), 'image')} skipped, with why</summary>"
        f'<table class="skipped"><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>'
        "</details>"
    )


def classes_html(review: Review) -> str:
    colors = class_colors(review.coco)
    head = "".join(f"<th>mean {html.escape(k)}</th>" for k in review.keys)
    body = []
    for row in class_rows(review):
        means = "".join(f"<td>{row['means'][k]}</td>" for k in review.keys)
        body.append(
            f'<tr data-class="{html.escape(row["name"])}"><td>{_swatch(colors[row["name"]])}{html.escape(row["name"])}'
            f"</td><td>{row['labels']:,}</td><td>{row['masks']:,}</td><td>{row['flagged']:,}</td>{means}</tr>"
        )
    return (
        f"<table class='classes'><thead><tr><th>class</th><th>labels</th><th>masks</th><th>flagged</th>{head}</tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table>"
    )


def histograms_html(names: list[str]) -> str:
    if not names:
        return "<p>The labels carry no score to plot.</p>"
    return "\n".join(f'<img src="{quote(n)}" alt="histogram of {html.escape(Path(n).stem)}">' for n in names)


def filter_html(review: Review) -> str:
    counts = Counter(item.category for item in review.shown)
    options = [f'<option value="">all classes ({len(review.shown):,})</option>']
    options += [
        f'<option value="{html.escape(c["name"])}">{html.escape(c["name"])} ({counts[c["name"]]:,})</option>'
        for c in review.coco.categories
        if counts[c["name"]]
    ]
    return "\n".join(options)


def sort_html(review: Review) -> str:
    return "\n".join(
        f'<option value="{html.escape(k)}"{" selected" if k == review.sort_key else ""}>{html.escape(k)}</option>'
        for k in review.keys
    )


def gallery_note(review: Review) -> str:
    note = "Each picture is one label up close; it links to the overlay of its whole image."
    if not review.keys:
        note += " The labels carry no score: they are in file order."
    if len(review.shown) < len(review.items):
        note += f" The gallery holds the {len(review.shown):,} most likely wrong of {len(review.items):,} labels."
    return note


def items_data(review: Review, out_dir: Path) -> dict:
    """What the gallery script pages through: one small record per shown label."""
    colors = class_colors(review.coco)
    records = []
    for item in review.shown:
        record = {"i": item.index, "c": item.category, "f": item.image["file_name"], "s": item.scores}
        if item.error is None:
            record["t"] = url(thumb_path(out_dir, item), out_dir)
            record["o"] = url(overlay_path(out_dir / "overlays", item.image["file_name"]), out_dir)
        else:
            record["e"] = item.error
        if item.flag:
            record["g"] = item.flag
        records.append(record)
    return {
        "sort": review.sort_key,
        "keys": review.keys,
        "pageSize": PAGE_SIZE,
        "colors": {name: f"rgb{rgb}" for name, rgb in colors.items()},
        "items": records,
    }


def page_html(review: Review, labels_path: Path, image_dir, histograms: list[str]) -> str:
    sources = f"labels <code>{html.escape(str(labels_path))}</code> · images <code>{html.escape(str(image_dir))}</code>"
    if review.gt_path:
        sources += f" · ground truth <code>{html.escape(review.gt_path)}</code>"
    return Template(PAGE).substitute(
        title=html.escape(f"Review: {labels_path.name}"),
        kind=html.escape(kind_of(review)),
        sources=sources,
        stats=stats_html(review),
        skipped=skipped_html(review),
        classes=classes_html(review),
        histograms=histograms_html(histograms),
        class_options=filter_html(review),
        sort_options=sort_html(review),
        note=html.escape(gallery_note(review)),
    )


def write_review(
    labels_path: str | Path,
    image_dir: str | Path,
    out_dir: str | Path,
    report: dict | None = None,
    gt_path: str | Path | None = None,
    max_labels: int = DEFAULT_MAX_LABELS,
    workers: int | None = None,
    allow_outside_image_dir: bool = False,
) -> Path:
    """Write the review of `labels_path` (images in `image_dir`) into `out_dir`; returns its index.html.

    `report` is the run's report (auto_label.report), for the summary's speed, memory and skipped images;
    `allow_outside_image_dir` as the run that made the labels had it;
    `gt_path` a ground-truth COCO file, to sort by IoU with it. The gallery holds the `max_labels` labels
    most likely wrong; the histograms and counts hold every label.
    """
    labels_path, out_dir = Path(labels_path), Path(out_dir)
    review = gather(labels_path, image_dir, report, gt_path, max_labels, allow_outside_image_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    render_pictures(review, out_dir, workers)
    histograms = write_histograms(review, out_dir)
    with atomic_write(out_dir / "items.js") as f:
        f.write("window.REVIEW_DATA = " + json.dumps(items_data(review, out_dir), ensure_ascii=False) + ";\n")
    page = out_dir / "index.html"
    with atomic_write(page) as f:
        f.write(page_html(review, labels_path, image_dir, histograms))
    return page
