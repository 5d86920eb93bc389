"""The failure kinds of ../shared/cases/2026-11-29 that concern inputs, prompts and outputs, each with its right value.

Every kind is tested twice: on the case as given (skipped, with the reason, when ../shared is absent) and
on a small equivalent built here, so that the kind stays covered without ../shared. The tokenizer
checks use a tiny BERT vocabulary written here: the normalisation under test (lower-casing, accent
stripping, dropped zero-width characters) belongs to the tokenizer, not to its vocabulary.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED
from gdino_helpers import SMALL_SIZE, VOCAB_DIR, needs_vocab
from PIL import Image

from gdino.__main__ import main as gdino_main
from gdino.data import GroundingDinoDataModule, noun_chunk_items
from gdino.errors import GDinoError
from gdino.prompts import PromptTokenizer, sanitize_names
from gdino.writer import drop_zero_area
from labelkit.visualize import overlay_path

CASES = SHARED / "cases" / "2026-11-29"


def case(name: str) -> Path:
    folder = CASES / name
    if not folder.is_dir():
        pytest.skip(f"real-world case {folder} not found (../shared/cases is not checked out here)")
    return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A BERT uncased tokenizer over a handful of words: its normaliser is the real one."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "person", "cafe", "car", "dog", "a", "bowl"]
    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(folder)


def write_image(path: Path, size=(128, 96), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def label(gdino_model_dir, *args: str) -> int:
    """`gdino label` with the tiny model at the small test size, threshold 0 so that every image has boxes."""
    return gdino_main(
        [
            "label",
            "--config",
            "configs/gdino/tiny.yaml",
            "--model.path",
            str(gdino_model_dir),
            "--model.image_size",
            json.dumps(SMALL_SIZE),
            "--model.precision",
            "fp32",
            "--model.iteration_scheduler",
            "[{conf_threshold: 0.0}]",
            "--model.max_dets_per_image",
            "5",
            "--data.num_workers",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            *args,
        ]
    )


# --- prompt-lookalike-names: names compared as the model's tokenizer sees them -------------------------------


LOOKALIKES = ["person", "person\u200b", "café", "cafe", "🚗", "🚲", "ｃａｒ", "dog"]


def refusal(tokenizer, names) -> str:
    with pytest.raises(GDinoError) as error:
        PromptTokenizer(tokenizer, sanitize_names(names), max_text_len=256)
    return str(error.value)


def test_lookalike_names_are_refused_naming_both(tokenizer):
    message = refusal(tokenizer, LOOKALIKES)
    assert "prompts 0 'person' and 1 'person\\u200b' are the same to the model's tokenizer" in message
    assert "prompts 2 'café' and 3 'cafe' are the same" in message
    assert "prompts 4 '🚗', 5 '🚲', 6 'ｃａｒ': only unknown tokens ([UNK])" in message
    assert "'dog'" not in message
    PromptTokenizer(tokenizer, ["person", "cafe", "dog"], max_text_len=256)  # the names told apart are fine


@needs_vocab
def test_lookalike_case_is_refused_with_the_real_vocabulary():
    from transformers import BertTokenizerFast

    names = json.loads((case("prompt-lookalike-names") / "class_names.json").read_text(encoding="utf-8"))
    message = refusal(BertTokenizerFast.from_pretrained(VOCAB_DIR), names)
    assert "prompts 0 'person' and 1 'person\\u200b' are the same" in message
    assert "prompts 2 'café' and 3 'cafe' are the same" in message
    assert "prompts 4 '🚗', 5 '🚲', 7 '헬멧', 8 'ｃａｒ': only unknown tokens" in message
    assert "'安全帽'" not in message  # 安 is a known token: partly unknown is a warning, not a refusal


@needs_vocab
def test_label_command_refuses_lookalike_names_with_one_error_line(gdino_model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    write_image(folder / "street.jpg")
    names = json.dumps(["person", "person\u200b", "car"])
    assert (
        label(
            gdino_model_dir,
            "--data.image_dir",
            str(folder),
            "--data.class_names",
            names,
            "--output",
            str(tmp_path / "labels.json"),
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "prompts 0 'person' and 1 'person\\u200b' are the same" in err and "Traceback" not in err
    assert not (tmp_path / "labels.json").exists()


def test_noun_chunk_vocabularies_ask_lookalikes_once_per_caption(tokenizer):
    packer = PromptTokenizer(tokenizer, ["cafe", "café", "dog"], max_text_len=256, merge_identical=True)
    assert [c.prompts for c in packer.chunks([1, 0, 2])] == [(1, 2)]  # the first of the two, once
    assert [c.prompts for c in packer.chunks([0])] == [(0,)]  # an image naming only one of them asks it


def test_a_class_name_that_looks_like_a_pasted_list_is_warned_about(tmp_path, caplog):
    write_image(tmp_path / "x.jpg")
    with caplog.at_level(logging.WARNING, logger="gdino.prompts"):
        GroundingDinoDataModule(image_dir=str(tmp_path), class_names=["person, car, dog"])
    assert "data.class_names[0] 'person, car, dog' is one class name" in caplog.text
    assert "[person, car, dog]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gdino.prompts"):
        GroundingDinoDataModule(image_dir=str(tmp_path), class_names=["person", "car"])
    assert "one class name" not in caplog.text


# --- noun-chunk-repeated: repeated chunks of one line are merged ----------------------------------------------


def test_repeated_chunks_of_a_line_are_merged(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg", seed=1)
    chunks = tmp_path / "chunks.jsonl"
    lines = [
        {
            "file_name": "a.jpg",
            "caption": "A bowl next to a bowl.",
            "noun_chunks": ["A bowl", "a bowl.", " a  BOWL ", "soup"],
        },
        {"file_name": "b.jpg", "noun_chunks": ["soup", "a tree", "Soup"]},
    ]
    chunks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items, vocab = noun_chunk_items(chunks, tmp_path)
    assert vocab.prompts == ["a bowl", "soup", "a tree"]
    assert [(it.file_name, it.prompts, it.caption) for it in items] == [
        ("a.jpg", (0, 1), "A bowl next to a bowl."),
        ("b.jpg", (1, 2), None),
    ]


def test_repeated_chunk_case_reads_every_line():
    folder = case("noun-chunk-repeated")
    items, vocab = noun_chunk_items(folder / "chunks.jsonl", folder / "images")
    assert vocab.prompts == ["a bowl", "soup", "a giraffe", "a tree"]
    assert [(it.file_name, it.prompts) for it in items] == [("a.jpg", (0, 1)), ("b.jpg", (2, 3))]


@needs_vocab
def test_label_command_labels_every_line_of_the_repeated_chunk_case(gdino_model_dir, tmp_path):
    folder = case("noun-chunk-repeated")
    out = tmp_path / "labels.json"
    code = label(
        gdino_model_dir,
        "--data.noun_chunk_path",
        str(folder / "chunks.jsonl"),
        "--data.image_dir",
        str(folder / "images"),
        "--output",
        str(out),
    )
    assert code == 0
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg"]
    assert [c["name"] for c in coco["categories"]] == ["a bowl", "soup", "a giraffe", "a tree"]
    by_image = {
        im["id"]: {a["category_id"] for a in coco["annotations"] if a["image_id"] == im["id"]} for im in coco["images"]
    }
    assert by_image[1] <= {1, 2} and by_image[2] <= {3, 4} and by_image[1] and by_image[2]


# --- tao-image-dir-list: a list of folders is one set of images, names unique ---------------------------------


def test_a_list_of_folders_is_one_set_with_unique_names(tmp_path):
    write_image(tmp_path / "sites" / "a" / "img.jpg")
    write_image(tmp_path / "sites" / "b" / "img.jpg", seed=1)  # the same base name in the other folder
    write_image(tmp_path / "sites" / "b" / "deep" / "c.png", seed=2)
    folders = [str(tmp_path / "sites" / "b"), str(tmp_path / "sites" / "a"), str(tmp_path / "sites" / "b" / "deep")]
    data = GroundingDinoDataModule(image_dir=folders, class_names=["car"])
    assert data.image_root == tmp_path / "sites"
    assert [(it.image_id, it.file_name) for it in data.items] == [
        (1, "a/img.jpg"),
        (2, "b/deep/c.png"),
        (3, "b/img.jpg"),
    ]
    assert all((data.image_root / it.file_name).samefile(it.path) for it in data.items)  # names lead to the files
    one = GroundingDinoDataModule(image_dir=[str(tmp_path / "sites" / "a")], class_names=["car"])
    assert [it.file_name for it in one.items] == ["img.jpg"]  # a list of one folder is that folder


def test_a_list_of_folders_with_a_jsonl_or_a_bad_entry_is_one_clear_error(tmp_path):
    write_image(tmp_path / "a" / "x.jpg")
    (tmp_path / "b").mkdir()
    chunks = tmp_path / "c.jsonl"
    chunks.write_text('{"file_name": "x.jpg", "noun_chunks": ["car"]}\n')
    with pytest.raises(GDinoError, match="names its files relative to one folder, but 2 folders"):
        GroundingDinoDataModule(image_dir=[str(tmp_path / "a"), str(tmp_path / "b")], noun_chunk_path=str(chunks))
    with pytest.raises(GDinoError, match=r"data.image_dir\[1\]: .*missing is not a directory"):
        GroundingDinoDataModule(image_dir=[str(tmp_path / "a"), str(tmp_path / "missing")], class_names=["car"])
    with pytest.raises(GDinoError, match="the list of folders is empty"):
        GroundingDinoDataModule(image_dir=[], class_names=["car"])


def test_tao_image_dir_list_case_labels_both_folders(monkeypatch):
    folder = case("tao-image-dir-list")
    spec = yaml.safe_load((folder / "spec.yaml").read_text())["grounding_dino"]["dataset"]
    monkeypatch.chdir(folder)  # the spec's folders are relative, as TAO users write them
    data = GroundingDinoDataModule(image_dir=spec["image_dir"], class_names=spec["class_names"])
    assert [it.file_name for it in data.items] == ["site_a/a.jpg", "site_b/b.jpg"]
    assert data.image_root == folder


@needs_vocab
def test_generate_labels_the_tao_image_dir_list_case(gdino_model_dir, tmp_path, monkeypatch):
    from auto_label.__main__ import cli

    folder = case("tao-image-dir-list")
    monkeypatch.chdir(folder)
    report = cli(
        [
            "generate",
            "-e",
            "spec.yaml",
            f"grounding_dino.checkpoint={gdino_model_dir}",
            f"results_dir={tmp_path / 'out'}",
            "grounding_dino.dataset.augmentation.test_random_resize=96",
            "grounding_dino.dataset.augmentation.random_resize_max_size=160",
        ]
    )
    coco = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["site_a/a.jpg", "site_b/b.jpg"]
    assert report["counts"]["images"] == 2 and report["counts"]["skipped_images"] == 0


# --- input folders: every Pillow format taken, every other file listed, any file name survives ----------------


def test_every_pillow_format_is_labelled_and_every_other_file_is_listed(tmp_path):
    for i, name in enumerate(["a.gif", "b.tga", "c.ppm", "d.jp2", "e.qoi", "f.JPG", "g.webp", "h.tiff", "i.bmp"]):
        write_image(tmp_path / name, seed=i)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("no extension")
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # a stub format: Pillow has no decoder
    data = GroundingDinoDataModule(image_dir=str(tmp_path), class_names=["car"])
    assert [it.file_name for it in data.items] == [
        "a.gif",
        "b.tga",
        "c.ppm",
        "d.jp2",
        "e.qoi",
        "f.JPG",
        "g.webp",
        "h.tiff",
        "i.bmp",
    ]
    assert all(it.size == (96, 128) for it in data.items)
    assert data.left_out == ["README", "notes.txt", "weights.h5"]
    for batch in data.predict_dataloader():
        assert batch[0]["error"] is None and batch[0]["image"].shape == (96, 128, 3)


@pytest.mark.skipif(os.name != "posix", reason="file names are bytes only on POSIX systems")
def test_a_file_name_that_is_not_utf8_becomes_an_error_record(tmp_path):
    write_image(tmp_path / "ok.jpg")
    write_image(Path(os.fsdecode(str(tmp_path).encode() + b"/caf\xe9.jpg")), seed=1)  # a Latin-1 name
    data = GroundingDinoDataModule(image_dir=str(tmp_path), class_names=["car"])
    assert [(it.file_name, it.error is None) for it in data.items] == [("caf\\xe9.jpg", False), ("ok.jpg", True)]
    records = [record for batch in data.predict_dataloader() for record in batch]
    assert "not UTF-8" in records[0]["error"] and records[1]["error"] is None
    json.dumps([it.file_name for it in data.items]).encode("utf-8")  # every name can be written out


@needs_vocab
@pytest.mark.skipif(os.name != "posix", reason="file names are bytes only on POSIX systems")
def test_label_command_on_a_mixed_folder_lists_what_it_did_not_label(gdino_model_dir, tmp_path):
    images = tmp_path / "images"
    write_image(images / "x.jpg")
    write_image(images / "x.png", seed=1)  # same stem: two overlays, neither overwritten
    write_image(Path(os.fsdecode(str(images).encode() + b"/\xff.jpg")), seed=2)
    (images / "notes.txt").write_text("hello")
    out, vis = tmp_path / "labels.json", tmp_path / "vis"
    assert (
        label(
            gdino_model_dir,
            "--data.image_dir",
            str(images),
            "--data.class_names",
            "[star]",
            "--output",
            str(out),
            "--writer.visualize_dir",
            str(vis),
        )
        == 0
    )
    assert [im["file_name"] for im in json.loads(out.read_text())["images"]] == ["x.jpg", "x.png"]
    errors = [json.loads(line) for line in (tmp_path / "labels.errors.jsonl").read_text().splitlines()]
    assert [e["file_name"] for e in errors] == ["\\xff.jpg", "notes.txt"]
    assert "not UTF-8" in errors[0]["error"] and "extension '.txt'" in errors[1]["error"]
    assert sorted(p.name for p in vis.iterdir()) == ["x.jpg.jpg", "x.png.jpg"]


# --- outputs: no zero-area labels, no overwritten overlays -----------------------------------------------------


def test_zero_area_boxes_are_dropped_and_counted():
    record = {
        "index": 0,
        "detections": [
            {"bbox": [3.0, 4.0, 10.0, 5.0]},
            {"bbox": [128.0, 10.0, 0.0, 5.0]},
            {"bbox": [0, 96.0, 4.0, 0.0]},
        ],
    }
    kept = drop_zero_area(record)
    assert kept["detections"] == [{"bbox": [3.0, 4.0, 10.0, 5.0]}] and kept["zero_area_boxes"] == 2
    assert next(iter(kept)) == "index"  # the shard key stays the first field
    clean = {"index": 1, "detections": [{"bbox": [1, 1, 1, 1]}]}
    assert drop_zero_area(clean) is clean and drop_zero_area({"index": 2, "error": "x"}) == {"index": 2, "error": "x"}


@needs_vocab
def test_label_command_writes_no_zero_area_box_and_counts_them(gdino_model_dir, tmp_path, monkeypatch, capsys):
    from torchvision.ops import box_convert

    def half_flat(boxes, in_fmt, out_fmt):  # every other query's box is 0 wide: zero area once clamped
        boxes = boxes.clone()
        boxes[:, ::2, 2] = 0.0
        return box_convert(boxes, in_fmt, out_fmt)

    monkeypatch.setattr("gdino.module.box_convert", half_flat)
    write_image(tmp_path / "images" / "x.jpg")
    out = tmp_path / "labels.json"
    assert (
        label(
            gdino_model_dir,
            "--data.image_dir",
            str(tmp_path / "images"),
            "--data.class_names",
            "[star, ring]",
            "--model.max_dets_per_image",
            "null",
            "--output",
            str(out),
        )
        == 0
    )
    coco = json.loads(out.read_text())
    assert coco["annotations"] and all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in coco["annotations"])
    # at threshold 0 every (query, class) pair is a box; flat boxes overlap nothing, so no NMS removes one
    flat_queries = (json.loads((gdino_model_dir / "config.json").read_text())["num_queries"] + 1) // 2
    assert f"; {flat_queries * 2} zero-area boxes dropped" in capsys.readouterr().out


def test_overlays_of_same_stem_images_do_not_overwrite_each_other(tmp_path):
    names = ["x.jpg", "x.png", "x.JPG", "sub/x.jpg", "x.png.jpg"]
    paths = [overlay_path(tmp_path, name) for name in names]
    assert len(set(paths)) == len(names)
    assert paths[0] == tmp_path / "x.jpg.jpg" and paths[3] == tmp_path / "sub" / "x.jpg.jpg"


def test_zero_area_boxes_never_take_the_place_of_a_real_box():
    from gdino.aggregate import aggregate

    boxes = torch.tensor([[128.0, 5, 128, 20], [0, 0, 10, 10], [5, 96, 30, 96], [50, 50, 60, 60]])
    scores = torch.tensor([0.95, 0.5, 0.9, 0.4])
    _, _, source = aggregate(boxes, scores, torch.zeros(4, dtype=torch.long), "nms", 0.5, max_dets=2)
    assert source.tolist() == [1, 3]


def test_an_overlay_that_cannot_be_written_is_an_error(tmp_path):
    from labelkit.visualize import save_rgb

    with pytest.raises(OSError, match="cannot write the image"):
        save_rgb(tmp_path / "missing_folder" / "x.jpg", np.zeros((4, 4, 3), np.uint8))


def test_overlays_of_names_leading_outside_stay_inside_their_folder(tmp_path):
    """`--allow-outside-image-dir` accepts absolute and ../ names; their overlays still land in the folder."""
    from labelkit.visualize import overlay_path

    for name in ("/abs/x.jpg", "../up/x.jpg", "a/../../x.jpg"):
        path = overlay_path(tmp_path / "vis", name).resolve()
        assert path.is_relative_to((tmp_path / "vis").resolve()), name
    assert overlay_path(tmp_path, "../x.jpg") != overlay_path(tmp_path, "x.jpg")
