"""Malformed annotation files through every command: one clear message, exit 2, no traceback, no work done."""

import json

import pytest
from auto_label_helpers import mal_spec_dict, tiny_assets, write_spec
from bad_inputs import MALFORMED_COCO, run_command
from conftest import TINY_MAL_ARGS

import auto_label.__main__
import gdino.__main__
import mal.__main__


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def mal_fit(assets, ann, out):
    data = ["--data.train_ann_path", str(ann), "--data.train_img_dir", str(assets["images"])]
    run = ["--trainer.max_epochs", "1", "--trainer.logger", "false", f"--trainer.default_root_dir={out}"]
    return mal.__main__.main, ["mal", "fit", *TINY_MAL_ARGS, *data, *run]


def mal_predict(assets, ann, out):
    data = ["--data.predict_ann_path", str(ann), "--data.predict_img_dir", str(assets["images"])]
    run = ["--ckpt_path", str(assets["mal_checkpoint"]), "--writer.label_dump_path", str(out / "labels.json")]
    run += ["--trainer.logger", "false", f"--trainer.default_root_dir={out}"]
    return mal.__main__.main, ["mal", "predict", *TINY_MAL_ARGS, *data, *run]


def gdino_label(assets, ann, out):
    # a model path that does not exist: the data must be checked (and refused) before the model is loaded
    args = ["label", "--model.path", str(out / "no_model"), "--data.ann_path", str(ann)]
    return gdino.__main__.main, ["gdino", *args, "--data.image_dir", str(assets["images"]), "--output", str(out / "o")]


def generate(assets, ann, out):
    # likewise a checkpoint that does not exist: the annotation file is refused first
    spec = mal_spec_dict(out, out / "no_checkpoint.ckpt", ann, assets["images"])
    return auto_label.__main__.main, ["auto_label", "generate", "-e", str(write_spec(out / "spec.yaml", spec))]


COMMANDS = {"mal fit": mal_fit, "mal predict": mal_predict, "gdino label": gdino_label, "generate": generate}
# Grounding DINO labels the images of a COCO file: one without annotations is valid input for it.
NOT_AN_ERROR = {("gdino label", "missing_annotations")}


@pytest.mark.parametrize("case", list(MALFORMED_COCO))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_malformed_annotation_file_is_one_clear_error(assets, tmp_path, capsys, monkeypatch, command, case):
    if (command, case) in NOT_AN_ERROR:
        pytest.skip("not malformed for this command")
    make, words = MALFORMED_COCO[case]
    ann = tmp_path / "bad.json"
    ann.write_bytes(make(json.loads(assets["boxes"].read_text())))
    out = tmp_path / "out"
    out.mkdir()
    main, argv = COMMANDS[command](assets, ann, out)
    code, err = run_command(main, argv, capsys, monkeypatch)
    assert code == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and str(ann) in error_lines[0], err
    for word in words:
        assert word in err
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("labels.json")) and not list(out.rglob(".*shards"))


def test_debug_shows_the_traceback(assets, tmp_path, capsys, monkeypatch):
    ann = tmp_path / "bad.json"
    ann.write_text("{")
    main, argv = COMMANDS["generate"](assets, ann, tmp_path)
    with pytest.raises(ValueError, match="invalid JSON"):
        run_command(main, [*argv, "--debug"], capsys, monkeypatch)


# name -> (the first record's segmentation, made for its image, the words naming the field and the fault)
BAD_MASKS = {
    "rle_overrun": (
        lambda im: {"size": [im["height"], im["width"]], "counts": [10, 20, im["height"] * im["width"]]},
        ["field 'segmentation.counts'", "runs cover"],
    ),
    "rle_of_another_size": (
        lambda im: {"size": [im["height"] + 1, im["width"]], "counts": [(im["height"] + 1) * im["width"]]},
        ["field 'segmentation.size'", "is not the image's [height, width]"],
    ),
    "huge_polygon_coordinates": (
        lambda im: [[0.0, 0.0, 1e12, 0.0, 5.0, 5.0]],
        ["field 'segmentation[0]'", "not within one image size"],
    ),
}


def mal_fit_validation(assets, ann, out):
    main, argv = mal_fit(assets, assets["boxes"], out)
    return main, [*argv, "--data.val_ann_path", str(ann), "--data.val_img_dir", str(assets["images"])]


def mal_validate(assets, ann, out):
    data = ["--data.val_ann_path", str(ann), "--data.val_img_dir", str(assets["images"])]
    run = [
        "--ckpt_path",
        str(assets["mal_checkpoint"]),
        "--trainer.logger",
        "false",
        f"--trainer.default_root_dir={out}",
    ]
    return mal.__main__.main, ["mal", "validate", *TINY_MAL_ARGS, *data, *run]


def mal_evaluate(assets, ann, out):
    return mal.__main__.main, ["mal", "evaluate", "--pred", str(assets["boxes"]), "--gt", str(ann)]


def gdino_evaluate(assets, ann, out):
    return gdino.__main__.main, ["gdino", "evaluate", "--pred", str(assets["boxes"]), "--gt", str(ann)]


MASK_COMMANDS = {
    "mal fit (validation file)": mal_fit_validation,
    "mal validate": mal_validate,
    "mal evaluate": mal_evaluate,
    "gdino evaluate": gdino_evaluate,
    "generate": generate,
}


@pytest.mark.parametrize("fault", list(BAD_MASKS))
@pytest.mark.parametrize("command", list(MASK_COMMANDS))
def test_a_bad_mask_stops_the_command_when_its_file_is_loaded(assets, tmp_path, capsys, monkeypatch, command, fault):
    segmentation, words = BAD_MASKS[fault]
    data = json.loads(assets["boxes"].read_text())
    first = data["annotations"][0]
    first["segmentation"] = segmentation(next(im for im in data["images"] if im["id"] == first["image_id"]))
    ann = tmp_path / "bad.json"
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    out.mkdir()
    main, argv = MASK_COMMANDS[command](assets, ann, out)
    code, err = run_command(main, argv, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    assert str(ann) in err and f"annotations[0] (id {first['id']})" in err, err
    for word in words:
        assert word in err
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("labels.json"))
