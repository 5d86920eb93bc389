"""`auto_label generate` end to end on tiny real models: mal and text2mask modes, the run report, errors."""

import json

import pytest
import torch
from auto_label_helpers import mal_predict_args, mal_spec_dict, text2mask_spec, tiny_assets, write_spec
from bad_inputs import run_module
from gdino_helpers import needs_vocab

from auto_label.__main__ import cli
from auto_label.generate import build_gdino, build_mal
from auto_label.spec import SpecError, load_spec
from labelkit.coco import load_coco
from labelkit.masks import segmentation_to_mask
from mal.__main__ import cli_main
from mal.evaluate import evaluate_files


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def mal_spec(assets, results_dir, **mal) -> dict:
    """The tiny MAL on the tiny boxes; `mal` adds keys to the spec's `mal` block."""
    spec = mal_spec_dict(results_dir, assets["mal_checkpoint"], assets["boxes"], assets["images"], num_workers=0)
    spec["mal"].update(mal)
    return spec


def test_mal_mode_matches_mal_predict_and_writes_a_report(assets, tmp_path, capsys):
    spec = write_spec(tmp_path / "box2seg.yaml", mal_spec(assets, tmp_path / "out"))
    report = cli(["generate", "-e", str(spec), "batch_size=2"])
    out = tmp_path / "out" / "labels.json"
    printed = capsys.readouterr().out
    assert "report:" in printed and "images/s" in printed

    reference = tmp_path / "predict.json"  # the same checkpoint through `python -m mal predict`
    cli_main(mal_predict_args(assets["mal_checkpoint"], assets["boxes"], assets["images"], reference))
    assert out.read_bytes() == reference.read_bytes()

    labels = load_coco(out, assets["images"])
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["counts"] == report["counts"]
    assert report["counts"]["images"] == len(labels.images) == 12
    assert report["counts"]["boxes"] == len(labels.annotations) > 0
    assert report["counts"]["masks"] == sum(a["area"] > 0 for a in labels.annotations)
    assert report["skipped"] == [] and report["counts"]["resumed_items"] == 0
    assert report["wall_time_s"] > 0 and report["images_per_s"] > 0 and report["boxes_per_s"] > 0
    assert report["peak_memory"]["cpu_rss_bytes"] > 10 * 2**20
    assert report["spec"]["batch_size"] == 2 and report["overrides"] == ["batch_size=2"]
    assert report["inputs"]["mal_ann_path"] == str(assets["boxes"])
    assert {"torch", "lightning", "transformers", "python"} <= set(report["versions"])
    assert not list((tmp_path / "out").glob(".*shards"))


def test_tao_flip_and_mixed_model_test_keys_steer_prediction(assets, tmp_path):
    evaluate = {"use_flip_test": True, "use_mixed_model_test": True}
    spec = write_spec(tmp_path / "tta.yaml", mal_spec(assets, tmp_path / "out", evaluate=evaluate))
    module = build_mal(load_spec(spec))
    assert module.hparams.use_flip_test and module.hparams.use_mixed_model_test
    saved = torch.load(assets["mal_checkpoint"], weights_only=True)["state_dict"]
    for name, value in module.teacher.state_dict().items():  # the checkpoint's teacher, not a copy of the student
        assert torch.equal(value, saved[f"teacher.{name}"])
    report = cli(["generate", "-e", str(spec)])
    plain = tmp_path / "plain.json"
    cli_main(mal_predict_args(assets["mal_checkpoint"], assets["boxes"], assets["images"], plain))
    tta, reference = (
        load_coco(path, assets["images"]).annotations for path in (tmp_path / "out" / "labels.json", plain)
    )
    assert report["counts"]["boxes"] == len(tta) == len(reference)
    assert [a["bbox"] for a in tta] == [a["bbox"] for a in reference]
    assert [a["mal_score"] for a in tta] != [a["mal_score"] for a in reference]  # other (averaged) probabilities


def test_tao_load_mask_scores_the_labels_against_the_input_masks(assets, tmp_path):
    spec = mal_spec(assets, tmp_path / "out")
    spec["mal"]["inference"]["load_mask"] = True
    report = cli(["generate", "-e", str(write_spec(tmp_path / "with_masks.yaml", spec))])
    evaluation = report["stages"][0]["evaluation"]
    expected = evaluate_files(str(tmp_path / "out" / "labels.json"), str(assets["boxes"]))
    assert evaluation == {k: None if v != v else v for k, v in expected.items()}  # null for a size without masks
    assert evaluation["num_instances"] == report["counts"]["boxes"] > 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["stages"][0]["evaluation"] == evaluation

    boxes_only = json.loads(assets["boxes"].read_text())
    for ann in boxes_only["annotations"]:
        ann.pop("segmentation", None)
    (tmp_path / "boxes_only.json").write_text(json.dumps(boxes_only))
    spec["mal"]["inference"]["ann_path"] = str(tmp_path / "boxes_only.json")
    spec["mal"]["checkpoint"] = str(tmp_path / "absent.ckpt")  # refused before the weights are looked at
    with pytest.raises(SpecError, match="load_mask is true, but .*boxes_only.json holds no instance masks"):
        cli(["generate", "-e", str(write_spec(tmp_path / "boxes_only.yaml", spec))])


def test_bad_images_are_skipped_and_reported(assets, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in assets["images"].glob("boxes_*.jpg"):
        (images / p.name).write_bytes(p.read_bytes())
    (images / "boxes_00003.jpg").write_bytes(b"\xff\xd8 truncated")
    spec = mal_spec(assets, tmp_path / "out")
    spec["mal"]["inference"]["img_dir"] = str(images)
    report = cli(["generate", "-e", str(write_spec(tmp_path / "s.yaml", spec))])
    assert [s["file_name"] for s in report["skipped"]] == ["boxes_00003.jpg"]
    assert report["skipped"][0]["stage"] == "mal" and "boxes_00003.jpg" in report["skipped"][0]["reason"]
    assert report["counts"]["images"] == 11 and report["counts"]["skipped_images"] == 1


def test_architecture_keys_must_agree_with_our_checkpoint(assets, tmp_path):
    spec = write_spec(tmp_path / "s.yaml", mal_spec(assets, tmp_path / "out", model={"arch": "vit-mae-base/16"}))
    with pytest.raises(SpecError, match="mal.model.arch is 'vit-mae-base/16' but .* was trained with"):
        cli(["generate", "-e", str(spec)])


@needs_vocab
def test_text2mask_keeps_boxes_and_both_scores(assets, tmp_path):
    spec = write_spec(tmp_path / "t2m.yaml", text2mask_spec(assets, tmp_path / "out"))
    report = cli(["generate", "-e", str(spec)])
    boxes = load_coco(tmp_path / "out" / "grounding_dino" / "labels.json", assets["images"])
    masks = load_coco(tmp_path / "out" / "mal" / "labels.json", assets["images"])
    assert masks.images == boxes.images and len(masks.images) == 16
    assert len(masks.annotations) == len(boxes.annotations) > 0
    sizes = {im["id"]: (im["height"], im["width"]) for im in masks.images}
    for box, mask in zip(boxes.annotations, masks.annotations):
        for key in ("id", "image_id", "category_id", "bbox", "score"):
            assert mask[key] == box[key]
        assert 0 <= mask["mal_score"] <= 1
        assert mask["area"] == int(segmentation_to_mask(mask["segmentation"], *sizes[mask["image_id"]]).sum())
    assert report["counts"]["boxes"] == len(boxes.annotations) and report["counts"]["images"] == 16
    assert [s["name"] for s in report["stages"]] == ["grounding_dino", "mal"]
    assert (tmp_path / "out" / "grounding_dino" / "final_annotation.jsonl").is_file()
    assert not list((tmp_path / "out").rglob(".*shards"))


@needs_vocab
def test_grounding_dino_annealing_mode_comes_from_the_spec(assets, tmp_path):
    """`grounding_dino.annealing` (ours, not TAO's) picks the labeler's annealing; requery by default."""
    spec = text2mask_spec(assets, tmp_path / "out")
    assert build_gdino(load_spec(write_spec(tmp_path / "default.yaml", spec))).annealing == "requery"
    spec["grounding_dino"]["annealing"] = "threshold"
    assert build_gdino(load_spec(write_spec(tmp_path / "threshold.yaml", spec))).annealing == "threshold"


def test_cli_error_names_the_unknown_key_without_traceback(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("autolabel_type: mal\nresults_dir: o\n")
    result = run_module("auto_label", "generate", "-e", str(spec), "mal.inferense.batch_size=2", timeout=120)
    assert result.returncode == 2
    assert "unknown key 'mal.inferense'; did you mean 'mal.inference'?" in result.stderr
    assert "Traceback" not in result.stderr
