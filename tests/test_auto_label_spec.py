"""TAO spec loading: defaults, overrides, strict keys with suggestions, and the shipped example specs."""

from pathlib import Path

import pytest
from conftest import REPO

from auto_label.__main__ import parse_args
from auto_label.spec import ALL_KEYS, SpecError, load_spec


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


MAL_SPEC = """
autolabel_type: mal
results_dir: out
mal:
  checkpoint: m.ckpt
  inference: {ann_path: a.json, img_dir: imgs}
"""


def test_defaults_are_tao_defaults_and_user_keys_are_tracked(tmp_path):
    spec = load_spec(write(tmp_path, MAL_SPEC))
    assert spec.get("gpu_ids") == [0] and spec.get("num_gpus") == 1 and spec.get("batch_size") == 4
    assert spec.get("num_workers") == 8
    assert spec.get("mal.dataset.crop_size") == 512 and spec.get("mal.model.arch") == "vit-mae-base/16"
    assert spec.get("mal.train.mask_thres") == [0.1] and spec.get("mal.train.test_margin_rate") == [0.6, 0.6]
    assert spec.get("mal.inference.batch_size") == 3 and spec.get("mal.train.lr") == 1e-6
    assert spec.get("mal.train.use_amp") is True  # mixed precision where the hardware does it fast (auto)
    assert spec.get("grounding_dino.iteration_scheduler") == [{"conf_threshold": 0.5, "nms_threshold": 0.0}]
    assert spec.get("grounding_dino.model.max_text_len") == 256 and spec.get("grounding_dino.visualize") is True
    assert spec.is_set("mal.inference.ann_path") and not spec.is_set("mal.inference.batch_size")
    assert len(ALL_KEYS) > 80  # every TAO key of REFERENCE.md section 1 is in the schema


def test_dotted_overrides_win_and_are_type_checked(tmp_path):
    spec = load_spec(write(tmp_path, MAL_SPEC), ["num_gpus=2", "mal.inference.batch_size=8", "results_dir=/x"])
    assert spec.get("num_gpus") == 2 and spec.get("mal.inference.batch_size") == 8 and spec.get("results_dir") == "/x"
    assert spec.is_set("mal.inference.batch_size")
    with pytest.raises(SpecError, match="'num_gpus' must be a int"):
        load_spec(write(tmp_path, MAL_SPEC), ["num_gpus=two"])
    with pytest.raises(SpecError, match="key=value"):
        load_spec(write(tmp_path, MAL_SPEC), ["num_gpus"])


@pytest.mark.parametrize(
    ("extra", "unknown", "suggestion"),
    [
        (["mal.inference.label_dumppath=x"], "mal.inference.label_dumppath", "mal.inference.label_dump_path"),
        (["num_gpu=2"], "num_gpus", None),
        (["grounding_dino.dataset.clas_names=[a]"], "grounding_dino.dataset.clas_names", "class_names"),
    ],
)
def test_unknown_key_names_the_key_and_the_closest_valid_one(tmp_path, extra, unknown, suggestion):
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, MAL_SPEC), extra)
    message = str(e.value)
    assert "unknown key" in message and "did you mean" in message
    assert (suggestion or unknown) in message


def test_unknown_key_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path, MAL_SPEC + "  modle: {arch: x}\n")
    with pytest.raises(SpecError, match=r"spec.yaml: unknown key 'mal.modle'; did you mean 'mal.model'"):
        load_spec(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("autolabel_type: box\nresults_dir: o\n", "autolabel_type must be one of"),
        ("autolabel_type: mal\nresults_dir: o\n", "mal.checkpoint is required"),
        (
            "autolabel_type: grounding_dino\nresults_dir: o\ngrounding_dino: {checkpoint: m, dataset: "
            "{image_dir: i, class_names: [a], noun_chunk_path: n.jsonl}}\n",
            "two vocabularies",
        ),
        (
            "autolabel_type: text2mask\nresults_dir: o\ngrounding_dino: {checkpoint: m, dataset: {image_dir: i}}\n"
            "mal: {checkpoint: c, inference: {ann_path: a.json}}\n",
            "mal.inference.ann_path is not used by text2mask",
        ),
        (
            "autolabel_type: mal\nmal: {checkpoint: c, inference: {ann_path: a, img_dir: i}}\n",
            "results_dir is required",
        ),
        (
            "autolabel_type: grounding_dino\nresults_dir: o\ngrounding_dino: {checkpoint: m, annealing: fast, "
            "dataset: {image_dir: i, class_names: [a]}}\n",
            "grounding_dino.annealing must be one of requery, threshold, got 'fast'",
        ),
    ],
)
def test_inconsistent_specs_are_refused(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize(
    "name", ["box2seg.yaml", "text2box.yaml", "text2mask.yaml", "box2seg_sam.yaml", "text2mask_sam.yaml"]
)
def test_example_specs_are_valid(name):
    spec = load_spec(REPO / "configs" / "auto_label" / name)
    assert spec.get("autolabel_type") in ("mal", "grounding_dino", "text2mask", "sam")


def test_command_line_shape():
    args = parse_args(["generate", "-e", "s.yaml", "results_dir=o", "num_gpus=2", "--fresh"])
    assert args.experiment_spec_file == "s.yaml" and args.overrides == ["results_dir=o", "num_gpus=2"] and args.fresh
