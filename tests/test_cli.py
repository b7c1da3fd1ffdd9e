"""The CLI dispatcher: help text, unknown commands, every command importable with its own --help."""

from __future__ import annotations

import pytest

from visionad_multicore.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_unknown_command_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["trian"])
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "run" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"visionad-multicore {name}" in capsys.readouterr().out


def test_run_rejects_non_positive_threads(tmp_path) -> None:
    config = tmp_path / "cfg.py"
    config.write_text("dataset_list = []\nmetrics = ['all']\nmodel_list = []\n")
    assert main(["run", "--config_file", str(config), "--threads", "0"]) == 2
