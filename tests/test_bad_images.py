"""Bad image files inside a run: readable ones labelled in the upright frame, the rest skipped and listed."""

import json

import numpy as np
import pytest
from auto_label_helpers import SMALL_RESIZE, mal_predict_args, mal_spec_dict, tiny_assets, write_spec
from bad_inputs import PIXEL_LIMIT, run_command, write_bad_images
from conftest import TINY_MAL_ARGS
from gdino_helpers import needs_vocab

import auto_label.__main__
import gdino.__main__
import mal.__main__
from auto_label.__main__ import cli
from labelkit.masks import segmentation_to_mask
from mal.__main__ import cli_main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    images = tmp_path_factory.mktemp("bad_images") / "images"
    boxes, expected = write_bad_images(images)
    return {"images": images, "boxes": boxes, "expected": expected, "coco": json.loads(boxes.read_text())}


def predict_args(assets, corpus, out, *extra) -> list[str]:
    return mal_predict_args(
        assets["mal_checkpoint"], corpus["boxes"], corpus["images"], out, "--data.max_pixels", str(PIXEL_LIMIT), *extra
    )


def check_skips(errors: list[dict], expected: dict, key: str = "reason") -> None:
    skipped = {name: word for name, word in expected.items() if word}
    assert sorted(e["file_name"] for e in errors) == sorted(skipped)
    for error in errors:
        assert skipped[error["file_name"]] in error[key]


def test_mal_predict_labels_readable_images_and_lists_the_rest(assets, corpus, tmp_path, capsys):
    out = tmp_path / "labels.json"
    cli_main(predict_args(assets, corpus, out))
    assert f"5 images skipped, listed in {tmp_path / 'errors.jsonl'}" in capsys.readouterr().out
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    check_skips(errors, corpus["expected"])
    by_name = {im["file_name"]: im for im in corpus["coco"]["images"]}
    assert all(e["annotation_ids"] == [by_name[e["file_name"]]["id"]] for e in errors)  # every box accounted for

    result = json.loads(out.read_text())
    labelled = {a["image_id"]: a for a in result["annotations"]}
    readable = [name for name, word in corpus["expected"].items() if word is None]
    assert sorted(labelled) == sorted(by_name[name]["id"] for name in readable)
    for name in readable:
        image, ann = by_name[name], labelled[by_name[name]["id"]]
        assert ann["segmentation"]["size"] == [image["height"], image["width"]]  # the upright (EXIF) frame
        mask = segmentation_to_mask(ann["segmentation"], image["height"], image["width"])
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert ann["area"] == len(xs)
        if len(xs):  # inside the box, give or take the 1-pixel rim of the original MAL's paste-back
            assert x - 1 <= xs.min() and xs.max() < x + w + 1 and y - 1 <= ys.min() and ys.max() < y + h + 1


def test_mal_predict_strict_fails_on_the_first_skip(assets, corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "labels.json"
    code, err = run_command(
        mal.__main__.main, ["mal", *predict_args(assets, corpus, out), "--strict"], capsys, monkeypatch
    )
    assert code == 2 and "Traceback" not in err
    assert "--strict: missing.jpg:" in err and "run the same command again to resume" in err
    assert not out.exists()
    done = [json.loads(line) for p in tmp_path.glob(".labels.json.shards/rank*.jsonl") for line in p.open()]
    assert [r["image_pos"] for r in done] == [0]  # good.jpg kept; the skipped image is not marked done


def test_mal_fit_skips_unreadable_images_and_lists_them(corpus, tmp_path, capsys, monkeypatch):
    args = [
        "fit",
        *TINY_MAL_ARGS,
        "--data.train_ann_path",
        str(corpus["boxes"]),
        "--data.train_img_dir",
        str(corpus["images"]),
        "--data.max_pixels",
        str(PIXEL_LIMIT),
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with pytest.raises(
        ValueError, match=r"(?s)image files missing.*images\[1\] \(id 2\): field 'file_name': .*missing.jpg not found"
    ):
        cli_main(args)  # fit keeps a missing training image an error: the training set is the user's to fix
    corpus_without_missing = json.loads(corpus["boxes"].read_text())
    corpus_without_missing["images"] = [
        im for im in corpus_without_missing["images"] if im["file_name"] != "missing.jpg"
    ]
    missing_id = 2
    corpus_without_missing["annotations"] = [
        a for a in corpus_without_missing["annotations"] if a["image_id"] != missing_id
    ]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(corpus_without_missing))
    args[args.index(str(corpus["boxes"]))] = str(train)
    cli = cli_main(args)
    assert cli.trainer.global_step > 0
    expected = {k: v for k, v in corpus["expected"].items() if k != "missing.jpg"}
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    check_skips(errors, expected)
    assert all(e["boxes_skipped"] == 1 for e in errors)
    assert "fit: 4 images could not be read (4 box samples skipped)" in capsys.readouterr().out

    code, err = run_command(mal.__main__.main, ["mal", *args, "--strict"], capsys, monkeypatch)
    assert code == 2 and "--strict: " in err and "Traceback" not in err


def test_generate_counts_skipped_images_and_strict_fails(assets, corpus, tmp_path, capsys, monkeypatch):
    spec = mal_spec_dict(tmp_path / "out", assets["mal_checkpoint"], corpus["boxes"], corpus["images"], num_workers=0)
    path = write_spec(tmp_path / "spec.yaml", spec)
    report = cli(["generate", "-e", str(path), "--max-pixels", str(PIXEL_LIMIT)])
    check_skips(report["skipped"], corpus["expected"])
    assert report["counts"]["skipped_images"] == 5 and report["counts"]["images"] == 7
    assert report["counts"]["boxes"] == 7

    spec["results_dir"] = str(tmp_path / "strict")
    argv = ["auto_label", "generate", "-e", str(write_spec(path, spec)), "--strict"]
    code, err = run_command(auto_label.__main__.main, argv, capsys, monkeypatch)
    assert code == 2 and "--strict: missing.jpg" in err and "Traceback" not in err


@needs_vocab
def test_gdino_label_lists_unreadable_images_and_sizes_readable_ones_upright(
    assets, corpus, tmp_path, capsys, monkeypatch
):
    images = tmp_path / "images"
    images.mkdir()
    for name in corpus["expected"]:
        if name != "missing.jpg":
            (images / name).write_bytes((corpus["images"] / name).read_bytes())
    (images / "missing.jpg").symlink_to(images / "deleted.jpg")  # a dangling link: a file that went away
    out = tmp_path / "labels.json"
    argv = [
        "gdino",
        "label",
        "--model.path",
        str(assets["gdino"]),
        "--model.image_size",
        json.dumps({"shortest_edge": SMALL_RESIZE["test_random_resize"], "longest_edge": 160}),
        "--data.image_dir",
        str(images),
        "--data.class_names",
        "[star]",
        "--data.max_pixels",
        str(PIXEL_LIMIT),
        "--trainer.enable_progress_bar",
        "false",
        "--output",
        str(out),
    ]
    code, err = run_command(gdino.__main__.main, argv, capsys, monkeypatch)
    assert code == 0, err
    errors = [json.loads(line) for line in (tmp_path / "labels.errors.jsonl").read_text().splitlines()]
    check_skips(errors, corpus["expected"], key="error")
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in json.loads(out.read_text())["images"]}
    expected_sizes = {im["file_name"]: (im["width"], im["height"]) for im in corpus["coco"]["images"]}
    assert sizes == {name: expected_sizes[name] for name, word in corpus["expected"].items() if word is None}

    code, err = run_command(gdino.__main__.main, [*argv, "--strict"], capsys, monkeypatch)
    assert code == 2 and "--strict: " in err and "Traceback" not in err
