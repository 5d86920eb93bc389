"""The benchmark scripts are not run by the tests (they take minutes), but they must stay importable and their
command lines must parse."""

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

import mal.self_training

BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def load(path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(path.parent), *sys.path])  # restored afterwards, as the scripts add to it
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    try:
        spec.loader.exec_module(module)
    finally:
        for script in BENCHMARKS:  # one script imports another by name
            sys.modules.pop(script.stem, None)
    return module


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_script_imports_and_parses_its_arguments(path, monkeypatch, capsys):
    module = load(path, monkeypatch)
    monkeypatch.setattr(sys, "argv", [path.name, "--help"])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_mal_predict_table_names_the_cpu_capability_and_precision(monkeypatch):
    module = load(REPO / "benchmarks" / "mal_predict.py", monkeypatch)
    run = {"images": 2, "boxes": 4, "images_per_s": 1.0, "boxes_per_s": 2.0, "achieved_gflops": 50.0}
    run.update(fraction_of_matmul=0.5, matmul_dtype="fp32", loop_s=2.0, writer_s=0.1, total_s=2.5)
    results = {
        "machine": {"cpu": "x86", "cores": 2, "cpu_capability": "AVX2", "torch": "2", "torch_threads": 2},
        "matmul_gflops": {"fp32": 100.0},
        "precision": {"ours": "32-true", "reason": "CPU AVX2: no native bf16, 32-true"},
        "model": "vit",
        "flops_per_box": {"small": 1e9},
        "datasets": [
            {
                "dataset": "synthetic",
                "ours": run,
                "ours_subset": {**run, "speedup_vs_reference": 1.3, "speedup_range": (1.2, 1.4)},
                "reference_subset": {**run, "mask_iou_vs_ours": 0.98},
            }
        ],
    }
    table = module.markdown(results)
    assert "CPU capability AVX2" in table and "Ours in 32-true (CPU AVX2: no native bf16, 32-true)" in table
    assert "| ours, fp32 |" in table and "bf16" not in table.replace("no native bf16", "")


def test_mal_coco128_takes_documented_overrides_in_both_spellings(monkeypatch):
    module = load(REPO / "benchmarks" / "mal_coco128.py", monkeypatch)
    seen = {}
    monkeypatch.setattr(mal.self_training, "cli_main", lambda argv: seen.setdefault("argv", argv) and exit(0))
    monkeypatch.setattr(sys, "argv", ["mal_coco128.py", "--minutes", "0", "trainer.max_steps=450", "--model.lr=1e-5"])
    with pytest.raises(SystemExit):
        module.main()
    assert seen["argv"][-2:] == ["--trainer.max_steps=450", "--model.lr=1e-5"]
    assert mal.self_training.cli_overrides(["--data.batch_size", "8"]) == ["--data.batch_size", "8"]
    configs = [arg for arg in seen["argv"] if arg.startswith("--config=")]  # the from-scratch recipe on top
    assert [Path(arg).name for arg in configs] == ["coco128_cpu.yaml", "scratch_cpu.yaml"]


def test_the_from_scratch_recipe_is_layered_on_the_full_config(capsys):
    from mal.__main__ import cli_main

    configs = [f"--config={REPO / 'configs' / 'mal' / name}" for name in ("coco128_cpu.yaml", "scratch_cpu.yaml")]
    with pytest.raises(SystemExit):
        cli_main(["fit", *configs, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]
    assert (model["mask_scale_ratio_pre"], model["mask_scale_ratio"]) == (1.4142, 1.4142)
    assert model["test_crf_num_iter"] == 20 and model["test_crf_colour_weight"] == 1.0
    assert model["test_crf_unary_max"] == [0.95, 0.7, 0.7] and model["test_grabcut_num_iter"] == 3
    assert model["arch"] == "vit_tiny_patch16_224" and model["loss_pairwise_weight"] == 0.0  # from coco128_cpu.yaml
    assert config["trainer"]["max_epochs"] == 9
