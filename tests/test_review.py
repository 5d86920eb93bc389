"""The review page (auto_label.review): what it holds, read from its DOM and files (always), and what a person
sees in a real browser: headless Chromium driven over the DevTools protocol (skipped where there is none)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from auto_label import review as review_module
from auto_label.__main__ import cli
from auto_label.review import find_report, write_review
from labelkit.masks import mask_to_rle, segmentation_to_mask
from labelkit.synthetic import make_synthetic_coco

NUM_IMAGES = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """Ground truth with masks, and MAL-like labels of it: every mask eroded a little (IoU below 1), a score
    per label, one flagged label, and one image that cannot be read (listed in errors.jsonl, as MAL does)."""
    root = tmp_path_factory.mktemp("review_data")
    gt_path = make_synthetic_coco(root, num_images=NUM_IMAGES, height=96, width=128, max_objects=3, seed=2, name="gt")
    gt = json.loads(gt_path.read_text())
    labels = json.loads(gt_path.read_text())
    rng = np.random.default_rng(0)
    for ann in labels["annotations"]:
        mask = segmentation_to_mask(ann["segmentation"], 96, 128)
        eroded = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=int(rng.integers(0, 3)))
        ann.update(segmentation=mask_to_rle(eroded), area=int(eroded.sum()), mal_score=round(float(rng.random()), 4))
    labels["annotations"][0]["mal_flag"] = "clipped_box"
    labels["images"].append({"id": 99, "file_name": "broken.jpg", "width": 128, "height": 96})
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    labels_path = root / "labels.json"
    labels_path.write_text(json.dumps(labels))
    error = {"image_id": 99, "file_name": "broken.jpg", "reason": "cannot decode image", "annotation_ids": []}
    (root / "errors.jsonl").write_text(json.dumps(error) + "\n")
    return {"root": root, "gt": gt_path, "labels": labels_path, "images": root / "images", "truth": gt}


class Page(HTMLParser):
    """The static DOM of index.html: stats by key, sources and links, filter options."""

    def __init__(self, text: str):
        super().__init__()
        self.stats, self.sources, self.options, self.scripts = {}, [], {}, []
        self._stat, self._in, self._select = None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-stat" in attrs:
            self._stat = attrs["data-stat"]
        self._in = tag
        for name in ("src", "href"):
            if name in attrs:
                self.sources.append(attrs[name])
        if tag == "script" and "src" in attrs:
            self.scripts.append(attrs["src"])
        if tag == "select":
            self._select = attrs["id"]
        if tag == "option":
            self.options.setdefault(self._select, []).append(attrs["value"])

    def handle_data(self, data):
        if self._stat and self._in == "dd":
            self.stats[self._stat] = data.strip()
            self._stat = None


def read_items(out: Path) -> dict:
    text = (out / "items.js").read_text()
    return json.loads(text.removeprefix("window.REVIEW_DATA = ").removesuffix(";\n"))


def test_page_holds_summary_classes_histograms_and_a_gallery_worst_first(dataset, tmp_path):
    out = tmp_path / "review"
    page = write_review(dataset["labels"], dataset["images"], out)
    dom = Page(page.read_text())
    labels = json.loads(dataset["labels"].read_text())["annotations"]
    assert dom.stats["images"] == str(NUM_IMAGES) and dom.stats["boxes"] == str(len(labels))
    assert dom.stats["masks"] == str(len(labels)) and dom.stats["skipped"] == "1"
    assert "cannot decode image" in page.read_text()
    # everything the page loads is beside it: no network, no absolute path
    assert not [s for s in dom.sources if "//" in s or s.startswith("/")]
    for source in dom.sources:
        assert (out / unquote(source)).is_file(), source
    assert dom.scripts == ["items.js"] and (out / "histograms" / "mal_score.png").is_file()
    data = read_items(out)
    scores = [item["s"]["mal_score"] for item in data["items"]]
    assert data["sort"] == "mal_score" and scores == sorted(scores) and len(scores) == len(labels)
    for item in data["items"]:
        assert cv2.imread(str(out / unquote(item["t"]))) is not None
        assert cv2.imread(str(out / unquote(item["o"]))) is not None
    classes = {item["c"] for item in data["items"]}
    assert set(dom.options["class-filter"]) == {""} | classes  # "all classes" and each class with labels
    assert dom.options["sort-key"] == ["mal_score"]
    flagged = [item for item in data["items"] if item.get("g")]
    assert [item["g"] for item in flagged] == ["clipped_box"]


def test_ground_truth_sorts_by_iou_and_unreadable_images_say_why(dataset, tmp_path):
    labels = json.loads(dataset["labels"].read_text())
    first, second = labels["annotations"][:2]
    other_class = second["category_id"] % len(labels["categories"]) + 1
    labels["annotations"].append({**first, "id": 1000, "image_id": 99})  # on the image that cannot be read
    labels["annotations"].append({**second, "id": 1001, "category_id": other_class, "mal_score": 0.99})
    path = dataset["root"] / "labels_extra.json"
    path.write_text(json.dumps(labels))
    write_review(path, dataset["images"], tmp_path, gt_path=dataset["gt"])
    data = read_items(tmp_path)
    ious = [item["s"]["iou"] for item in data["items"]]
    assert data["sort"] == "iou" and ious == sorted(ious)
    relabelled = next(item for item in data["items"] if item["i"] == len(labels["annotations"]) - 1)
    assert relabelled["s"]["iou"] < 0.5 < data["items"][-1]["s"]["iou"]  # no object of that class is there
    broken = next(item for item in data["items"] if item["f"] == "broken.jpg")
    assert "t" not in broken and "not a recognised image file" in broken["e"]


def test_boxes_with_scores_and_a_report(dataset, tmp_path):
    """Grounding DINO's file: boxes only, `score`, its own ids, `<stem>.errors.jsonl`; a run report beside."""
    truth = dataset["truth"]
    anns = [
        {k: a[k] for k in ("id", "image_id", "category_id", "bbox")} | {"score": 0.3 + 0.1 * (i % 6), "iscrowd": 0}
        for i, a in enumerate(truth["annotations"])
    ]
    folder = tmp_path / "run"
    folder.mkdir()
    labels = folder / "labels.json"
    labels.write_text(json.dumps({**truth, "annotations": anns}))
    (folder / "labels.errors.jsonl").write_text(json.dumps({"file_name": "a.txt", "error": "left out: not an image"}))
    report = {
        "autolabel_type": "grounding_dino",
        "counts": {"images": NUM_IMAGES, "boxes": len(anns), "masks": 0},
        "skipped": [{"stage": "grounding_dino", "file_name": "a.txt", "reason": "left out: not an image"}],
        "images_per_s": 2.5,
        "boxes_per_s": 7.25,
        "wall_time_s": 3.0,
        "processes": 1,
        "accelerator": "cpu",
        "peak_memory": {"cpu_rss_bytes": 300 * 2**20},
        "outputs": {"grounding_dino": "out/run/labels.json"},
    }
    (folder / "report.json").write_text(json.dumps(report))
    assert find_report(labels) == report  # it names run/labels.json among its outputs
    cli(["review", "--labels", str(labels), "--images", str(dataset["images"]), "--gt", str(dataset["gt"])])
    out = folder / "review"
    dom = Page((out / "index.html").read_text())
    assert dom.stats["throughput"] == "2.5 images/s, 7.25 boxes/s" and dom.stats["peak_memory"] == "300 MiB"
    assert dom.stats["masks"] == "0" and dom.stats["skipped"] == "1"
    data = read_items(out)
    assert data["keys"] == ["score", "iou"] and all(item["s"]["iou"] == 1.0 for item in data["items"])


def test_sam_scores_and_a_gallery_cut_to_the_most_likely_wrong(dataset, tmp_path):
    labels = json.loads(dataset["labels"].read_text())
    for ann in labels["annotations"]:
        ann["sam_score"] = ann.pop("mal_score")
    path = tmp_path / "sam.json"
    path.write_text(json.dumps(labels))
    write_review(path, dataset["images"], tmp_path / "review", max_labels=4)
    data = read_items(tmp_path / "review")
    lowest = sorted(a["sam_score"] for a in labels["annotations"])[:4]
    assert data["sort"] == "sam_score" and [item["s"]["sam_score"] for item in data["items"]] == lowest
    assert "most likely wrong of" in (tmp_path / "review" / "index.html").read_text()


# ---- in a browser ------------------------------------------------------------------------------------

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on
    its fd 3, replies on its fd 4, each message ending in a NUL byte): no port, no extra package."""

    def __init__(self, profile: Path):
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()

        def as_fds_3_and_4():  # first above 10, so that neither end is overwritten by the other's dup2
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=as_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self.session = b"", 0, None

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str, width: int = 1280, height: int = 4000) -> None:
        """A new tab of `width` x `height` CSS pixels (tall: every card in view, so every lazy image loads)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && document.querySelectorAll('#gallery .card').length > 0")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(condition):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {condition}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    chromium = Browser(tmp_path / "profile")
    yield chromium
    chromium.close()


ALL_IMAGES_LOADED = "Array.from(document.images).every(img => img.complete)"
BROKEN_IMAGES = "Array.from(document.images).filter(img => img.naturalWidth === 0).map(img => img.src)"
CARDS = "Array.from(document.querySelectorAll('#gallery .card')).map(card => card.dataset.class)"


def test_a_person_sees_the_numbers_the_pictures_and_the_class_filter(dataset, tmp_path, browser, monkeypatch):
    monkeypatch.setattr(review_module, "PAGE_SIZE", 8)  # several pages from a small run
    page = write_review(dataset["labels"], dataset["images"], tmp_path / "review")
    labels = json.loads(dataset["labels"].read_text())["annotations"]
    browser.open(page.as_uri())
    shown = browser.evaluate("document.querySelector('[data-stat=images] dd').innerText")
    assert shown == str(NUM_IMAGES)
    assert browser.evaluate("document.querySelector('[data-stat=boxes] dd').innerText") == str(len(labels))
    browser.wait_for(ALL_IMAGES_LOADED)
    assert browser.evaluate(BROKEN_IMAGES) == []
    assert browser.evaluate("document.querySelectorAll('#gallery img').length") == 8  # one page, not all
    browser.screenshot(tmp_path / "review.png")

    names = {c["id"]: c["name"] for c in json.loads(dataset["labels"].read_text())["categories"]}
    counts = {}
    for ann in labels:
        counts[names[ann["category_id"]]] = counts.get(names[ann["category_id"]], 0) + 1
    chosen = max(counts, key=counts.get)
    browser.evaluate(
        f"(() => {{ const s = document.getElementById('class-filter'); s.value = {json.dumps(chosen)};"
        " s.dispatchEvent(new Event('change')); })()"
    )
    cards = browser.evaluate(CARDS)
    assert cards and set(cards) == {chosen} and len(cards) == min(8, counts[chosen])
    assert browser.evaluate("location.hash") == f"#class={chosen}"
    browser.wait_for(ALL_IMAGES_LOADED)
    assert browser.evaluate(BROKEN_IMAGES) == []

    browser.evaluate(
        "document.getElementById('class-filter').value = ''; "
        "document.getElementById('class-filter').dispatchEvent(new Event('change'))"
    )
    browser.evaluate("document.getElementById('next').click()")
    assert browser.evaluate("document.getElementById('range').innerText") == f"labels 9–16 of {len(labels)}"
