"""Bad configuration: one clear error before any model work, through every command."""

import pytest
import yaml
from auto_label_helpers import mal_spec_dict, tiny_assets, write_spec
from bad_inputs import run_command
from conftest import TINY_MAL_ARGS

import auto_label.__main__
import gdino.__main__
import mal.__main__


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with `option` set to `value` (replaced where it is already given)."""
    args = list(args)
    if option in args:
        args[args.index(option) + 1] = value
        return args
    return [*args, option, value]


def mal_args(assets, tmp_path, subcommand: str) -> list[str]:
    images = str(assets["images"])
    if subcommand == "fit":
        data = ["--data.train_ann_path", str(assets["boxes"]), "--data.train_img_dir", images]
        run = ["--trainer.max_epochs", "1", f"--trainer.default_root_dir={tmp_path}"]
    else:
        data = ["--data.predict_ann_path", str(assets["boxes"]), "--data.predict_img_dir", images]
        run = ["--ckpt_path", str(assets["mal_checkpoint"]), "--writer.label_dump_path", str(tmp_path / "labels.json")]
        run.append(f"--trainer.default_root_dir={tmp_path}")
    return [subcommand, *TINY_MAL_ARGS, *data, *run, "--trainer.logger", "false"]


def mal_cases(base: list[str], tmp_path) -> dict[str, tuple[list[str], str]]:
    return {
        "unknown key": ([*base, "--model.mask_treshold", "0.5"], "mask_treshold"),
        "threshold above 1": (
            [*base, "--model.mask_thres", "1.5"],
            "model.mask_thres must be one or three values in [0, 1]",
        ),
        "two unary caps": (
            [*base, "--model.test_crf_unary_max", "[0.9, 0.8]"],
            "model.test_crf_unary_max must be one or three values in [0, 1]",
        ),
        "crop_size not divisible by the patch size": (
            with_option(base, "--data.crop_size", "36"),
            "crop_size 36 is not divisible by the patch size 8",
        ),
        "missing checkpoint": (
            with_option(base, "--ckpt_path", str(tmp_path / "absent.ckpt")),
            "checkpoint file not found",
        ),
        "missing pretrained weights": (
            [*base, "--model.pretrained_path", str(tmp_path / "absent.pth")],
            "absent.pth: checkpoint file not found",
        ),
    }


def gdino_cases(assets, tmp_path) -> dict[str, tuple[list[str], str]]:
    base = ["label", "--model.path", str(assets["gdino"]), "--data.image_dir", str(assets["images"])]
    base += ["--data.class_names", "[star]", "--output", str(tmp_path / "labels.json")]
    return {
        "unknown key": ([*base, "--data.clas_names", "[car]"], "clas_names"),
        "threshold above 1": (
            [*base, "--model.iteration_scheduler", "[{conf_threshold: 1.5}]"],
            "iteration_scheduler[0].conf_threshold: must be a number in [0, 1], got 1.5",
        ),
        "empty class list": (with_option(base, "--data.class_names", "[]"), "data.class_names: the list is empty"),
        "missing checkpoint": (with_option(base, "--model.path", str(tmp_path / "absent")), "absent does not exist"),
    }


def generate_cases(assets, tmp_path) -> dict[str, tuple[dict, str]]:
    mal = mal_spec_dict(tmp_path, assets["mal_checkpoint"], assets["boxes"], assets["images"])
    gdino = {
        "autolabel_type": "grounding_dino",
        "results_dir": str(tmp_path),
        "grounding_dino": {
            "checkpoint": str(assets["gdino"]),
            "dataset": {"image_dir": str(assets["images"]), "class_names": ["star"]},
        },
    }

    def changed(spec: dict, path: str, value) -> dict:
        spec = yaml.safe_load(yaml.safe_dump(spec))
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
        return spec

    return {
        "unknown key": (changed(mal, "mal.inference.batchsize", 2), "unknown key 'mal.inference.batchsize'"),
        "threshold above 1": (changed(mal, "mal.train.mask_thres", [1.5]), "mal.train.mask_thres must be one or three"),
        "gdino threshold below 0": (
            changed(gdino, "grounding_dino.iteration_scheduler", [{"conf_threshold": -0.1}]),
            "must be a number in [0, 1], got -0.1",
        ),
        "empty class list": (
            changed(gdino, "grounding_dino.dataset.class_names", []),
            "grounding_dino.dataset.class_names is an empty list",
        ),
        "crop_size unlike the checkpoint's": (
            changed(mal, "mal.dataset.crop_size", 36),
            "mal.dataset.crop_size is 36 but",
        ),
        "missing checkpoint": (
            changed(mal, "mal.checkpoint", str(tmp_path / "absent.ckpt")),
            "absent.ckpt: checkpoint file not found",
        ),
    }


MAL_CASES = ["unknown key", "threshold above 1", "crop_size not divisible by the patch size", "missing checkpoint"]
MAL_CASES += ["missing pretrained weights", "two unary caps"]


# Not tried: model options for `predict --ckpt_path`: Lightning's CLI replaces them by the checkpoint's.
NOT_APPLICABLE = {
    ("fit", "missing checkpoint"),
    ("predict", "threshold above 1"),
    ("predict", "missing pretrained weights"),
}


@pytest.mark.parametrize("case", MAL_CASES)
@pytest.mark.parametrize("subcommand", ["fit", "predict"])
def test_mal(assets, tmp_path, capsys, monkeypatch, subcommand, case):
    if (subcommand, case) in NOT_APPLICABLE:
        pytest.skip("not applicable")
    args, message = mal_cases(mal_args(assets, tmp_path, subcommand), tmp_path)[case]
    code, err = run_command(mal.__main__.main, ["mal", *args], capsys, monkeypatch)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "labels.json").exists() and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("case", ["unknown key", "threshold above 1", "empty class list", "missing checkpoint"])
def test_gdino_label(assets, tmp_path, capsys, monkeypatch, case):
    args, message = gdino_cases(assets, tmp_path)[case]
    code, err = run_command(gdino.__main__.main, ["gdino", *args], capsys, monkeypatch)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "labels.json").exists()


@pytest.mark.parametrize(
    "case",
    [
        "unknown key",
        "threshold above 1",
        "gdino threshold below 0",
        "empty class list",
        "crop_size unlike the checkpoint's",
        "missing checkpoint",
    ],
)
def test_generate(assets, tmp_path, capsys, monkeypatch, case):
    spec, message = generate_cases(assets, tmp_path)[case]
    argv = ["auto_label", "generate", "-e", str(write_spec(tmp_path / "spec.yaml", spec))]
    code, err = run_command(auto_label.__main__.main, argv, capsys, monkeypatch)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "labels.json").exists() and not (tmp_path / "report.json").exists()
