"""Every file in configs/sam is a valid configuration of its command: each key is an option, each value of its type."""

import pytest
from conftest import REPO

from sam.__main__ import cli_main

CONFIGS = sorted((REPO / "configs" / "sam").glob("*.yaml"))


def test_there_is_a_config_per_family():
    assert {p.stem for p in CONFIGS} == {"sam_vit_b", "sam_hq_vit_b", "sam2_hiera_tiny", "edgetam", "sam3"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_against_its_command(path, capsys):
    command = ["label", "--output", "labels.json"] if path.stem == "sam3" else ["predict"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command[0], "--config", str(path), *command[1:], "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "path: models/" in printed and "trainer:" in printed


def test_a_misspelt_key_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "sam" / "sam_vit_b.yaml").read_text().replace("multimask:", "multimasks:"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", "--config", str(bad), "--print_config"])
    assert exit_info.value.code == 2 and "multimasks" in capsys.readouterr().err
