"""The command line contract: sizes, key handling, exit codes, and the man page staying true."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pixxelfs.cli import build_parser, main
from pixxelfs.config import parse_size, read_api_key
from pixxelfs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGE = ROOT / "man" / "pixxelfs.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512", 512), ("64K", 64 << 10), ("512M", 512 << 20), ("4G", 4 << 30), ("1.5GiB", 3 << 29)],
)
def test_sizes_accept_binary_suffixes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-1", "12Q", "1.2.3"])
def test_bad_sizes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_key_file_with_loose_mode_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        read_api_key(str(key_file), environ={})
    assert "chmod 600" in str(caught.value)
    assert "s3cret-key" not in str(caught.value)
    key_file.chmod(0o600)
    assert read_api_key(str(key_file), environ={}) == "s3cret-key"


def test_key_comes_from_the_environment_or_a_clear_error() -> None:
    assert read_api_key(None, environ={"PIXXEL_API_KEY": " k1 "}) == "k1"
    with pytest.raises(ConfigError, match="PIXXEL_API_KEY"):
        read_api_key(None, environ={})


def test_missing_key_exits_2_with_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PIXXEL_API_KEY", raising=False)
    assert main(["mount", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PIXXEL_API_KEY" in err[0]


def test_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pixxelfs", "mount"], capture_output=True, text=True
    )
    assert result.returncode == 2
    result = subprocess.run(
        [sys.executable, "-m", "pixxelfs", "mount", "/tmp", "--memory-cache-size", "lots"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "not a size" in result.stderr


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    options: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _all_options(sub)
        elif action.help != argparse.SUPPRESS:
            options.update(o for o in action.option_strings if o.startswith("--") or o == "-o")
    return options - {"--help", "--version"}


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_man_page_documents_every_command_and_option() -> None:
    text = MAN_PAGE.read_text().replace("\\-", "-")
    parser = build_parser()
    for command in _subcommands(parser):
        assert re.search(rf"\b{command}\b", text), f"man page lacks the command {command}"
    missing = [o for o in sorted(_all_options(parser)) if o not in text]
    assert not missing, f"man page lacks options: {missing}"


def test_man_page_renders_without_warnings() -> None:
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MAN_PAGE)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"},
    )
    assert result.returncode == 0
    assert result.stderr == "", result.stderr
    assert "pixxelfs mount" in result.stdout
