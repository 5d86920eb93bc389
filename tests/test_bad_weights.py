"""Weights files whose pickle would run code are refused by every command; safetensors twins win."""

import pytest
import torch
from auto_label_helpers import tiny_assets, write_spec
from bad_inputs import run_command
from conftest import TINY_MAL_ARGS
from gdino_helpers import VOCAB_DIR, needs_vocab, tiny_model, to_idea_layout
from safetensors.torch import save_file

import auto_label.__main__
import gdino.__main__
import mal.__main__
from gdino.model import load_detector, small_config
from mal.checkpoint import read_checkpoint
from mal.model import build_mask_net


class RunsCode:
    """Unpickling this calls `Path.touch(marker)`: the proof that a file ran code on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": RunsCode(marker)}, path)
    return path, marker


def commands(assets, evil_path, tmp_path) -> dict:
    images = str(assets["images"])
    spec = {
        "autolabel_type": "mal",
        "results_dir": str(tmp_path / "out"),
        "mal": {"checkpoint": str(evil_path), "inference": {"ann_path": str(assets["boxes"]), "img_dir": images}},
    }
    predict = ["--data.predict_ann_path", str(assets["boxes"]), "--data.predict_img_dir", images]
    return {
        "mal predict --ckpt_path": (
            mal.__main__.main,
            [
                "mal",
                "predict",
                *TINY_MAL_ARGS,
                *predict,
                "--ckpt_path",
                str(evil_path),
                "--writer.label_dump_path",
                "x",
            ],
        ),
        "mal fit --model.pretrained_path": (
            mal.__main__.main,
            [
                "mal",
                "fit",
                *TINY_MAL_ARGS,
                "--data.train_ann_path",
                str(assets["boxes"]),
                "--data.train_img_dir",
                images,
            ]
            + ["--model.pretrained_path", str(evil_path), "--trainer.logger", "false"],
        ),
        "gdino label (.pth)": (
            gdino.__main__.main,
            ["gdino", "label", "--model.path", str(evil_path), "--model.architecture", "tiny", "--model.tokenizer"]
            + [str(tmp_path), "--data.image_dir", images, "--data.class_names", "[star]", "--output", "o.json"],
        ),
        "generate (mal.checkpoint)": (
            auto_label.__main__.main,
            ["auto_label", "generate", "-e", str(write_spec(tmp_path / "spec.yaml", spec))],
        ),
    }


@pytest.mark.parametrize(
    "command",
    ["mal predict --ckpt_path", "mal fit --model.pretrained_path", "gdino label (.pth)", "generate (mal.checkpoint)"],
)
def test_pickle_that_would_run_code_is_refused(assets, evil, tmp_path, capsys, monkeypatch, command):
    path, marker = evil
    main, argv = commands(assets, path, tmp_path)[command]
    code, err = run_command(main, argv, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert f"{path}: refused to load: the file holds pickled objects other than weights" in err
    assert not marker.exists()


def test_lightning_checkpoint_loading_is_weights_only(assets, capsys, monkeypatch):
    argv = ["mal", "predict", *TINY_MAL_ARGS, "--ckpt_path", str(assets["mal_checkpoint"]), "--weights_only", "false"]
    code, err = run_command(mal.__main__.main, argv, capsys, monkeypatch)
    assert code == 2 and "--weights_only false is not supported" in err


def test_mal_prefers_the_safetensors_twin(evil, tmp_path):
    path, marker = evil
    net = build_mask_net(
        "vit_tiny_patch16_224", 32, backbone_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
    )
    save_file({k: v.contiguous() for k, v in net.backbone.state_dict().items()}, path.with_suffix(".safetensors"))
    assert set(read_checkpoint(path)[0]) == set(net.backbone.state_dict())
    assert not marker.exists()


@needs_vocab
def test_gdino_prefers_the_safetensors_twin(evil, tmp_path):
    path, marker = evil
    pth = path.with_suffix(".pth")
    path.rename(pth)
    state = to_idea_layout(tiny_model().state_dict())["model"]
    save_file({k: v.contiguous().clone() for k, v in state.items()}, pth.with_suffix(".safetensors"))
    config = tmp_path / "config.json"
    small_config().to_json_file(config)
    detector = load_detector(str(pth), architecture=str(config), tokenizer=str(VOCAB_DIR))
    assert detector.model.config.d_model == 32 and not marker.exists()
