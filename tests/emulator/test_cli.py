"""The emulator's command line: flag parsing and a real serve / interrupt cycle in a subprocess."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from pixxelfs.emulator.cli import add_arguments, config_from_args

SERVE = (
    "import argparse, sys\n"
    "from pixxelfs.emulator.cli import add_arguments, config_from_args, run\n"
    "parser = argparse.ArgumentParser()\n"
    "add_arguments(parser)\n"
    "sys.exit(run(config_from_args(parser.parse_args(sys.argv[1:]))))\n"
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    config = config_from_args(_parse())
    assert (config.host, config.port, config.api_key) == ("127.0.0.1", 8700, "demo-key")
    assert config.faults.rules == ()


def test_flags_reach_the_config() -> None:
    args = _parse(
        "--port", "0", "--raster-size", "256x64", "--bands", "4", "--compression", "stored",
        "--bandwidth", "50M", "--latency-ms", "20", "--fail-calls", "2,5",
        "--fault-target", "storage", "--download-mode", "never", "--url-lifetime", "5",
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.width, config.height, config.bands) == (256, 64, 4)
    assert config.compression == "stored" and config.download_mode == "never"
    [rule] = config.faults.rules
    assert rule.target == "storage" and rule.bandwidth == 50 * 1024 * 1024
    assert rule.latency_ms == 20 and rule.fail_calls == (2, 5)


@pytest.mark.parametrize("argv", [["--raster-size", "12"], ["--bandwidth", "fast"]])
def test_bad_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(*argv)
    assert exc.value.code == 2


def _start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SERVE, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_prints_url_and_key_then_stops_on_sigint() -> None:
    proc = _start("--port", "0", "--scenes", "2", "--api-key", "k1")
    try:
        assert proc.stdout is not None
        url_line, key_line = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        assert url_line.startswith("PIXXEL_API_URL=http://127.0.0.1:")
        assert key_line == "PIXXEL_API_KEY=k1"
        base = url_line.split("=", 1)[1]
        listing = httpx.post(f"{base}/v0/catalogs/search", json={}, headers={"Authorization": "k1"})
        assert listing.json()["pagination"]["total"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_run_fails_cleanly_when_the_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = _start("--port", str(busy.getsockname()[1]))
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert "cannot serve" in stderr and time.monotonic() - started < 30
