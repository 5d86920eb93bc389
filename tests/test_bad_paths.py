"""File names that escape the image folder are refused, unless --allow-outside-image-dir is given."""

import json
import os

import pytest
from auto_label_helpers import mal_spec_dict, tiny_assets, write_spec
from bad_inputs import run_command
from conftest import TINY_MAL_ARGS
from gdino_helpers import needs_vocab

import auto_label.__main__
import gdino.__main__
import mal.__main__
from auto_label.__main__ import cli


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def tree(assets, tmp_path_factory):
    """images/ with a good image and a link to elsewhere/outside.jpg, a real image outside the folder."""
    root = tmp_path_factory.mktemp("paths")
    (root / "images").mkdir()
    (root / "elsewhere").mkdir()
    source = json.loads(assets["boxes"].read_text())
    picture = (assets["images"] / source["images"][0]["file_name"]).read_bytes()
    (root / "images" / "good.jpg").write_bytes(picture)
    (root / "elsewhere" / "outside.jpg").write_bytes(picture)
    os.symlink(root / "elsewhere" / "outside.jpg", root / "images" / "link.jpg")
    return root


def coco_file(tree, names: list[str]) -> str:
    images = [{"id": i, "file_name": n, "width": 128, "height": 96} for i, n in enumerate(names, start=1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 40, 30]} for i in range(1, len(names) + 1)]
    path = tree / f"boxes_{len(list(tree.glob('boxes_*')))}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return str(path)


ESCAPES = {"dot_dot": "../../etc/passwd", "absolute": "/etc/passwd", "symlink": "link.jpg"}


def mal_fit(assets, ann, tree, out):
    data = ["--data.train_ann_path", ann, "--data.train_img_dir", str(tree / "images")]
    return mal.__main__.main, [
        "mal",
        "fit",
        *TINY_MAL_ARGS,
        *data,
        "--trainer.logger",
        "false",
        f"--trainer.default_root_dir={out}",
    ]


def mal_predict(assets, ann, tree, out):
    data = ["--data.predict_ann_path", ann, "--data.predict_img_dir", str(tree / "images")]
    run = ["--ckpt_path", str(assets["mal_checkpoint"]), "--writer.label_dump_path", str(out / "labels.json")]
    run += ["--trainer.logger", "false", f"--trainer.default_root_dir={out}"]
    return mal.__main__.main, ["mal", "predict", *TINY_MAL_ARGS, *data, *run]


def gdino_label(assets, ann, tree, out):
    data = ["--data.ann_path", ann, "--data.image_dir", str(tree / "images"), "--data.num_workers", "0"]
    model = ["--model.path", str(assets["gdino"]), "--model.image_size", '{"shortest_edge": 96, "longest_edge": 160}']
    return gdino.__main__.main, ["gdino", "label", *model, *data, "--output", str(out / "labels.json")]


def generate(assets, ann, tree, out):
    spec = mal_spec_dict(out, assets["mal_checkpoint"], ann, tree / "images", num_workers=0)
    return auto_label.__main__.main, ["auto_label", "generate", "-e", str(write_spec(out / "spec.yaml", spec))]


COMMANDS = {"mal fit": mal_fit, "mal predict": mal_predict, "gdino label": gdino_label, "generate": generate}


@pytest.mark.parametrize("kind", list(ESCAPES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_escaping_file_name_is_refused(assets, tree, tmp_path, capsys, monkeypatch, command, kind):
    ann = coco_file(tree, ["good.jpg", ESCAPES[kind]])
    main, argv = COMMANDS[command](assets, ann, tree, tmp_path)
    code, err = run_command(main, argv, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert f"images[1] (id 2): field 'file_name': {ESCAPES[kind]!r} points outside the image directory" in err
    assert "--allow-outside-image-dir" in err and ann in err
    assert not list(tmp_path.rglob("labels.json"))


@needs_vocab
@pytest.mark.parametrize("command", ["mal predict", "gdino label", "generate"])
def test_allow_outside_image_dir_labels_them(assets, tree, tmp_path, capsys, monkeypatch, command):
    ann = coco_file(tree, ["good.jpg", "../elsewhere/outside.jpg", "link.jpg", str(tree / "elsewhere" / "outside.jpg")])
    main, argv = COMMANDS[command](assets, ann, tree, tmp_path)
    code, err = run_command(main, [*argv, "--allow-outside-image-dir"], capsys, monkeypatch)
    assert code == 0, err
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert [im["id"] for im in labels["images"]] == [1, 2, 3, 4]
    if command != "gdino label":  # MAL: one mask per box
        assert sorted(a["image_id"] for a in labels["annotations"]) == [1, 2, 3, 4]


@needs_vocab
def test_gdino_folder_with_a_link_to_outside(assets, tree, tmp_path, capsys, monkeypatch):
    argv = ["gdino", "label", "--model.path", str(assets["gdino"]), "--data.image_dir", str(tree / "images")]
    argv += ["--data.class_names", "[star]", "--output", str(tmp_path / "labels.json")]
    code, err = run_command(gdino.__main__.main, argv, capsys, monkeypatch)
    assert code == 2 and "'link.jpg' points outside the image directory" in err
    noun_chunks = tmp_path / "chunks.jsonl"
    noun_chunks.write_text(json.dumps({"file_name": "../../etc/passwd", "noun_chunks": ["a star"]}) + "\n")
    argv_chunks = [*argv[:6], "--data.noun_chunk_path", str(noun_chunks), "--output", str(tmp_path / "labels.json")]
    code, err = run_command(gdino.__main__.main, argv_chunks, capsys, monkeypatch)
    assert code == 2 and f"{noun_chunks}: line 1: field 'file_name': '../../etc/passwd' points outside" in err


def test_generate_refuses_before_loading_the_model(assets, tree, tmp_path):
    ann = coco_file(tree, ["../../etc/passwd"])
    spec = {"autolabel_type": "mal", "results_dir": str(tmp_path), "mal": {"checkpoint": str(tmp_path / "none.ckpt")}}
    spec["mal"]["inference"] = {"ann_path": ann, "img_dir": str(tree / "images")}
    with pytest.raises(ValueError, match="points outside the image directory"):  # not "checkpoint file not found"
        cli(["generate", "-e", str(write_spec(tmp_path / "s.yaml", spec))])
