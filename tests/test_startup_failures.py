"""The sidecar as a real process that must not start: one JSON line, a distinct exit code.

What an operator sees in `kubectl logs` when a pod crash-loops: no traceback, no
"Unclosed client session", the variable and the accepted form in one line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from sidecar.cli import EXIT_CONFIG, EXIT_STARTUP
from tests.redis_process import free_port

ROOT = Path(__file__).resolve().parent.parent
_OURS = ("SIDECAR_", "CACHE_", "REDIS_", "UPSTREAM_")


def _run(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env={**base, "SIDECAR_HOST": "127.0.0.1", "SIDECAR_ADMIN_HOST": "127.0.0.1",
             "SIDECAR_PORT": str(free_port()), "SIDECAR_ADMIN_PORT": str(free_port()), **env},
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _only_line(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert "Traceback" not in result.stdout + result.stderr
    assert "Unclosed" not in result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    line: dict[str, object] = json.loads(lines[0])
    return line


def test_a_bad_setting_stops_start_up_with_exit_78_and_one_json_line() -> None:
    result = _run({"SIDECAR_ADMIN_PORT": "9091.7", "CACHE_ENCRYPTION_KEY": "notbase64",
                   "SIDECAR_LOG_LEVEL": "LOUD"})
    assert result.returncode == EXIT_CONFIG
    line = _only_line(result)
    assert line["level"] == "error"
    assert line["msg"] == "configuration rejected: not started"
    problems = line["problems"]
    assert isinstance(problems, list) and len(problems) == 3
    assert any("SIDECAR_ADMIN_PORT='9091.7'" in p and "1 to 65535" in p for p in problems)
    assert any("CACHE_ENCRYPTION_KEY is not valid base64" in p for p in problems)
    assert any("SIDECAR_LOG_LEVEL='LOUD'" in p and "DEBUG, INFO" in p for p in problems)


def test_a_bad_rules_file_stops_start_up_with_exit_78(tmp_path: Path) -> None:
    rules = tmp_path / "routes.yaml"
    rules.write_text("rules: []\n")
    result = _run({}, "--config", str(rules))
    assert result.returncode == EXIT_CONFIG
    line = _only_line(result)
    assert f"{rules}:" in str(line["problems"])


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run({"SIDECAR_PORT": str(port)})
    assert result.returncode == EXIT_STARTUP
    assert "Traceback" not in result.stdout + result.stderr
    assert "Unclosed" not in result.stdout + result.stderr
    errors = [json.loads(x) for x in result.stdout.splitlines() if '"level": "error"' in x]
    assert len(errors) == 1
    assert "address already in use" in str(errors[0]["msg"])


def test_check_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`sidecar --check | head -3`: the reader may be gone before the first line."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "--check"], env=base, cwd=tmp_path,
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    head = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{sys.executable} -m sidecar --check | head -1"],
        env=base, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert (head.returncode, head.stderr) == (0, "")
    assert "routes.yaml: OK (3 rules" in head.stdout


def test_version_and_help(tmp_path: Path) -> None:
    version = _run({}, "--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith("sidecar 0.")
    help_ = _run({}, "--help", cwd=tmp_path)
    assert "SIDECAR_ADMIN_PORT" in help_.stdout and "README" in help_.stdout
    assert f"{EXIT_CONFIG} configuration error" in help_.stdout
