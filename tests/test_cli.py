"""The `sam` command: help for every subcommand, one-line config errors, and the commands on a
smoke-sized trained run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sam.cli import COMMANDS, EXIT_CONFIG, build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_explains_its_arguments(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    assert sub.description and sub.description.split()[0] in out
    for action in sub._actions:
        if action.help and action.help != "==SUPPRESS==" and action.dest != "help":
            assert action.help.split()[0] in out, f"{command} --help does not explain {action.dest}"


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unknown_config_key_in_yaml_is_a_one_line_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: smoke\ntrain:\n  learning_rate: 0.1\n")
    assert "train.learning_rate" in _one_line_error(capsys, ["train", "--config", str(bad)])


def test_bad_override_value_and_unknown_override_key_name_the_key(capsys: pytest.CaptureFixture) -> None:
    cfg = str(REPO / "configs" / "smoke.yaml")
    assert "train.stages.1.lr" in _one_line_error(capsys, ["train", "--config", cfg, "train.stages.1.lr=fast"])
    assert "model.lora.rnak" in _one_line_error(capsys, ["train", "--config", cfg, "model.lora.rnak=4"])
    assert "train.stages.1.trainable" in _one_line_error(capsys, ["train", "--config", cfg, "train.stages.1.trainable=[decoder]"])


def test_missing_config_file_and_unknown_preset_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in _one_line_error(capsys, ["train", "--config", str(tmp_path / "nope.yaml")])
    preset_file = tmp_path / "p.yaml"
    preset_file.write_text("preset: laptop\n")
    assert "laptop" in _one_line_error(capsys, ["train", "--config", str(preset_file)])


def test_config_error_exits_2_without_traceback_as_a_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: smoke\nmodel:\n  lm:\n    d_model: wide\n")
    proc = subprocess.run([sys.executable, "-m", "sam.cli", "train", "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip().count("\n") == 0 and "model.lm.d_model" in proc.stderr and "Traceback" not in proc.stderr
