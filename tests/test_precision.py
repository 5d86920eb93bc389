"""`precision: auto`: the decision as a pure function of the hardware facts, and a MAL run on a CPU without
native bf16 (forced with AUTO_LABEL_CPU_BF16=0) that trains and predicts in fp32, as its report says."""

import json
import logging

import pytest
import torch
from auto_label_helpers import mal_spec_dict, write_spec
from conftest import TINY_MAL_ARGS
from gdino_helpers import needs_vocab
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.precision import MixedPrecision

from auto_label.__main__ import cli
from auto_label.generate import mal_precision
from auto_label.spec import load_spec
from gdino.__main__ import main as gdino_main
from gdino.module import GroundingDinoLabeler
from labelkit.precision import (
    ENV_CPU_BF16,
    capability_label,
    choose_precision,
    cpu_bf16_override,
    cpu_has_native_bf16,
    cpu_label,
    device_type,
    resolve_dtype_name,
    resolve_precision,
)
from labelkit.synthetic import make_synthetic_coco
from mal.__main__ import Trainer, cli_main

NO_FLAGS = frozenset()
AVX512_BF16 = frozenset({"avx512_bf16"})
AMX = frozenset({"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize(
    ("capability", "flags", "expected", "label"),
    [
        ("AVX2", NO_FLAGS, "32-true", "AVX2"),
        ("AVX512", NO_FLAGS, "32-true", "AVX512"),  # Skylake-X .. Ice Lake: AVX512 without bf16
        ("AVX512", AVX512_BF16, "bf16-mixed", "AVX512 + AVX512-BF16"),
        ("AVX512", AMX, "bf16-mixed", "AVX512 + AVX512-BF16 + AMX"),
        ("AVX2", AVX512_BF16, "32-true", "AVX2 + AVX512-BF16"),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU
        ("DEFAULT", NO_FLAGS, "32-true", "DEFAULT"),
        ("SVE256", NO_FLAGS, "32-true", "SVE256"),
    ],
)
def test_cpu_gets_bf16_only_with_native_bf16(capability, flags, expected, label):
    precision, reason = choose_precision("cpu", capability, flags, cuda_bf16=None)
    assert precision == expected
    assert capability_label(capability, flags) == label
    assert reason.startswith(f"CPU {label}:") and reason.endswith(expected)


@pytest.mark.parametrize("flags", [NO_FLAGS, AMX])
def test_labelling_on_a_cpu_keeps_the_original_models_fp32(flags):
    """bf16 moved MAL's masks to IoU 0.976-0.996 against the original's (../shared/parity/mal): labels are
    made in fp32 on a CPU whatever it supports; training still takes native bf16."""
    precision, reason = choose_precision("cpu", "AVX512", flags, None, purpose="label")
    assert precision == "32-true" and "original" in reason
    assert choose_precision("cuda", "AVX512", flags, True, purpose="label")[0] == "bf16-mixed"
    with pytest.raises(ValueError, match="purpose"):
        choose_precision("cpu", "AVX512", flags, None, purpose="infer")


@pytest.mark.parametrize(("cuda_bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_cuda_gets_bf16_where_the_gpu_has_it_else_fp16(cuda_bf16, expected):
    assert choose_precision("cuda", "AVX2", NO_FLAGS, cuda_bf16)[0] == expected
    assert choose_precision("cuda", "AVX512", AMX, cuda_bf16)[0] == expected  # the CPU does not matter


@pytest.mark.parametrize("device", ["mps", "xla"])
def test_other_devices_get_fp32(device):
    assert choose_precision(device, "AVX512", AMX, cuda_bf16=None)[0] == "32-true"


def test_the_override_wins_over_what_the_cpu_reports():
    precision, reason = choose_precision("cpu", "AVX512", AMX, None, cpu_bf16_override=False)
    assert precision == "32-true" and f"{ENV_CPU_BF16}=0" in reason
    assert choose_precision("cpu", "AVX2", NO_FLAGS, None, cpu_bf16_override=True)[0] == "bf16-mixed"


def test_override_variable(monkeypatch):
    for value, expected in (("", None), ("0", False), ("1", True)):
        monkeypatch.setenv(ENV_CPU_BF16, value)
        assert cpu_bf16_override() is expected
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    assert not cpu_has_native_bf16()
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert cpu_has_native_bf16()
    monkeypatch.setenv(ENV_CPU_BF16, "yes")
    with pytest.raises(ValueError, match=ENV_CPU_BF16):
        cpu_bf16_override()


def test_accelerator_settings_map_to_the_device_lightning_picks():
    assert device_type("auto", cuda_available=True, mps_available=True) == "cuda"
    assert device_type("auto", cuda_available=False, mps_available=True) == "mps"
    assert device_type("auto", cuda_available=False, mps_available=False) == "cpu"
    assert device_type("gpu", cuda_available=False, mps_available=True) == "mps"
    assert device_type("cpu", cuda_available=True, mps_available=False) == "cpu"
    assert device_type("tpu", cuda_available=False, mps_available=False) == "xla"
    assert device_type(CPUAccelerator(), cuda_available=True, mps_available=False) == "cpu"


def test_an_explicit_precision_wins(monkeypatch):
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    assert resolve_precision("bf16-mixed", "cpu") == ("bf16-mixed", "set explicitly")
    assert resolve_dtype_name("bf16", "cpu") == ("bf16", "set explicitly")
    assert Trainer(accelerator="cpu", precision="bf16-mixed", logger=False).precision == "bf16-mixed"


def test_auto_decides_the_trainer_and_the_grounding_dino_dtype(monkeypatch):
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert Trainer(accelerator="cpu", logger=False).precision == "bf16-mixed"
    assert resolve_precision("auto", "cpu", purpose="label")[0] == "32-true"  # labels: the original's numerics
    assert resolve_dtype_name("auto", "cpu")[0] == "fp32"
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    trainer = Trainer(accelerator="cpu", logger=False)
    assert trainer.precision == "32-true" and f"{ENV_CPU_BF16}=0" in trainer.precision_reason
    assert resolve_dtype_name("auto", "cpu")[0] == "fp32"


def test_cpu_without_native_bf16_trains_and_predicts_in_fp32(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    with caplog.at_level(logging.INFO, logger="labelkit.precision"):
        fit = cli_main(
            [
                "fit",
                *TINY_MAL_ARGS,
                *("--data.train_ann_path", str(synthetic["train"]), "--data.train_img_dir", str(synthetic["images"])),
                *("--trainer.max_epochs", "1", "--trainer.logger", "false"),
                f"--trainer.default_root_dir={tmp_path / 'run'}",
            ]
        )
    assert fit.trainer.global_step > 0
    assert fit.trainer.precision == "32-true" and not isinstance(fit.trainer.precision_plugin, MixedPrecision)
    lines = [r.getMessage() for r in caplog.records if r.name == "labelkit.precision"]
    assert lines == [f"precision auto -> 32-true ({fit.trainer.precision_reason})"]
    checkpoint = tmp_path / "tiny.ckpt"
    fit.trainer.save_checkpoint(checkpoint)

    spec = mal_spec_dict(tmp_path / "out", checkpoint, synthetic["val"], synthetic["images"], num_workers=0)
    report = cli(["generate", "-e", str(write_spec(tmp_path / "spec.yaml", spec))])
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["precision"] == report["precision"] == {"mal": "32-true"}
    assert on_disk["cpu_capability"] == cpu_label()
    assert f"{ENV_CPU_BF16}=0" in on_disk["stages"][0]["precision_reason"]
    assert report["counts"]["masks"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="there the front door decides for the GPU")
def test_tao_use_amp_means_auto_and_false_means_fp32(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "spec.yaml", mal_spec_dict(tmp_path, "m.ckpt", "a.json", "images"))
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert mal_precision(load_spec(spec))[0] == "32-true"  # labelling on a CPU: the original's numerics
    assert mal_precision(load_spec(spec, ["mal.train.use_amp=false"])) == ("32-true", "mal.train.use_amp is false")
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    assert mal_precision(load_spec(spec))[0] == "32-true"


@needs_vocab
@pytest.mark.skipif(torch.cuda.is_available(), reason="there the labeler alone decides for the GPU")
def test_grounding_dino_casts_its_weights_to_the_auto_dtype(gdino_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    labeler = GroundingDinoLabeler(str(gdino_model_dir))
    assert labeler.precision_name == "fp32" and labeler.input_dtype == torch.float32
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert GroundingDinoLabeler(str(gdino_model_dir)).input_dtype == torch.float32  # labelling: IDEA's numerics
    assert GroundingDinoLabeler(str(gdino_model_dir), precision="bf16").input_dtype == torch.bfloat16
    assert GroundingDinoLabeler(str(gdino_model_dir), precision="fp32").input_dtype == torch.float32  # explicit

    monkeypatch.setenv(ENV_CPU_BF16, "0")  # `gdino label` decides for its --trainer.accelerator
    make_synthetic_coco(tmp_path, num_images=1, height=96, width=128, seed=0)
    with caplog.at_level(logging.INFO, logger="labelkit.precision"):
        code = gdino_main(
            ["label", "--model.path", str(gdino_model_dir), "--data.image_dir", str(tmp_path / "images")]
            + ["--data.class_names", "[star]", "--trainer.accelerator", "cpu", "--output", str(tmp_path / "o.json")]
        )
    assert code == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "labelkit.precision"]
    assert len(lines) == 1 and lines[0].startswith("precision auto -> 32-true")
