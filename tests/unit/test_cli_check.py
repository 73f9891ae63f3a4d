"""`sidecar --check`: validate the rules file and the environment, then exit 0 or 78."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import EXIT_CONFIG, main
from sidecar.settings import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ROOT / "config" / "routes.yaml"
_OURS = ("SIDECAR_", "CACHE_", "REDIS_", "UPSTREAM_")

BAD = """\
rules:
  - name: patient
    path: /api/v1/patients/{id}
    key: identity:patient:all
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads the real environment: start every test without our variables."""
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name)


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad-routes.yaml"
    path.write_text(BAD)
    return path


def test_shipped_file_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--config", str(ROUTES)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{ROUTES}: OK (3 rules" in out
    assert "patient: /api/v1/patients/{id} -> identity:patient:{id} ttl=600s" in out
    assert "stats-dashboard: /api/v1/statistics/dashboard -> identity:stats:dashboard" in out


def test_check_shows_env_overrides(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_TTL_PATIENT", "60")
    assert main(["--check", "--config", str(ROUTES)]) == 0
    assert "identity:patient:{id} ttl=60s (env CACHE_TTL_PATIENT)" in capsys.readouterr().out


def test_bad_file_fails_naming_file_rule_and_problem(
    bad_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check", "--config", str(bad_file)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad_file}:4:5: ")  # the key's line and column
    assert "'patient'" in lines[0]
    assert "must use exactly the path parameters ['id']" in lines[0]


def test_bad_env_override_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_TTL_PATIENT", "ten")
    assert main(["--check", "--config", str(ROUTES)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{ROUTES}:19:5: rule #1 'patient'" in err  # the ttl_env line
    assert "CACHE_TTL_PATIENT='ten' is not a whole number" in err


def test_ttl_beyond_a_year_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passed once, then stored entries every read decoded as corrupt (ttl >= 10**9)."""
    huge = tmp_path / "routes.yaml"
    huge.write_text(ROUTES.read_text().replace("ttl: 600\n    ttl_env: CACHE_TTL_PATIENT",
                                               "ttl: 2000000000\n    ttl_env: CACHE_TTL_PATIENT"))
    assert main(["--check", "--config", str(huge)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"error: {huge}:18:5: rule #1 'patient': ttl must be 1 to 31536000 seconds " \
           "(365 days), got 2000000000" in err
    monkeypatch.setenv("CACHE_TTL_PROFESSIONAL", "2000000000")
    assert main(["--check", "--config", str(ROUTES)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"error: {ROUTES}:31:5: rule #2 'professional': environment " \
           "CACHE_TTL_PROFESSIONAL='2000000000' is too long: a ttl must be 1 to 31536000 " \
           "seconds (365 days)" in err


def test_bad_setting_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "http://cache:6379")
    assert main(["--check", "--config", str(ROUTES)]) == EXIT_CONFIG
    assert "error: environment: REDIS_URL must start with" in capsys.readouterr().err


def test_missing_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["--check", "--config", str(missing)]) == EXIT_CONFIG
    assert f"error: {missing}: cannot read" in capsys.readouterr().err


def test_config_from_sidecar_config_env(
    bad_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_CONFIG", str(bad_file))
    assert main(["--check"]) == EXIT_CONFIG
    assert str(bad_file) in capsys.readouterr().err


def test_default_config_is_the_packaged_copy_from_any_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--check"]) == 0
    assert f"{DEFAULT_CONFIG}: OK (3 rules" in capsys.readouterr().out


def test_packaged_rules_are_config_routes_yaml() -> None:
    assert DEFAULT_CONFIG.read_bytes() == ROUTES.read_bytes(), \
        "sidecar/routes.yaml drifted: cp config/routes.yaml sidecar/routes.yaml"


def test_python_m_sidecar_check_exits_78_on_a_bad_file(bad_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--check", "--config", str(bad_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stdout == ""
    assert f"error: {bad_file}:4:5: rule #1 'patient': key 'identity:patient:all'" in result.stderr
    assert "Traceback" not in result.stderr


SHARED = ROUTES.read_text().replace(
    "    audit: true\n", "    audit: true\n    share: {claims: {role: [clinician]}}\n", 1)


def test_share_without_a_jwks_passes_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(SHARED)
    assert main(["--check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == (f"warning: {path}: rule 'patient' has share: but CACHE_JWT_JWKS_URL is "
                   "not set: no caller is shared (each keeps its own variant)\n")
    assert "ttl=600s (env CACHE_TTL_PATIENT) audit share" in out
    monkeypatch.setenv("CACHE_JWT_JWKS_URL", "https://idp.example.org/jwks.json")
    monkeypatch.setenv("CACHE_JWT_ISSUER", "https://idp.example.org")
    monkeypatch.setenv("CACHE_JWT_AUDIENCE", "identity-api")
    assert main(["--check", "--config", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_bad_share_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(SHARED.replace("[clinician]", "clinician"))
    assert main(["--check", "--config", str(path)]) == EXIT_CONFIG
    assert "share.claims.role must list the values that qualify, got 'clinician'" in (
        capsys.readouterr().err)
