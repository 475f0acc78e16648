"""Tests of the ``taa prepare`` command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from taa.cli.main import main
from taa.data.schema import Schema


def test_prepare_prints_a_summary(real_data: Path, tmp_path: Path, capsys) -> None:
    """Check that the command writes the dataset and prints rows and positives per split."""
    out = tmp_path / "data"
    main(
        [
            "-q",
            "prepare",
            "--out",
            str(out),
            "--domain",
            f"B={real_data / 'B'}",
            "--domain",
            f"NL={real_data / 'NL'}",
        ]
    )
    printed = capsys.readouterr().out
    assert Schema.load(out).domains == ("B", "NL")
    assert f"prepared 2 domains into {out}" in printed
    lines = {tuple(line.split()[:5]) for line in printed.splitlines()}
    assert ("B", "train", "100", "60", "2") in lines
    assert ("NL", "test", "2", "0", "0") in lines


def test_prepare_error_is_one_line(real_data: Path, tmp_path: Path, capsys) -> None:
    """Check that a bad option ends with exit code 2 and the library's message."""
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "prepare",
                "--out",
                str(tmp_path / "d"),
                "--domain",
                f"A={real_data / 'A'}",
                "--nan",
                "impute",
                "--domain",
                f"A={real_data / 'B'}",
            ]
        )
    assert stopped.value.code == 2
    assert "option --domain names 'A' twice" in capsys.readouterr().err


def test_prepare_help_lists_the_options(capsys) -> None:
    """Check that --help shows the options generated from PrepareConfig."""
    main(["prepare", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--domain",
        "--layout",
        "--nan",
        "--conversion-without-click",
        "--orphan-items",
        "--overwrite",
        "--memory-limit",
    ):
        assert option in text
