"""Every setting refuses a bad value, naming the variable, the problem and the accepted form.

`--check` and start-up run the same `Settings.from_env`, so what passes here cannot fail
when the sidecar starts (a port in use aside, see tests/test_startup_failures.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from sidecar.errors import ConfigError
from sidecar.settings import ENV_VARS, OTHER_ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_EXAMPLE = ROOT / "deploy" / "kubernetes" / "base" / "secret.example.yaml"
SIXTEEN_BYTES = "AAAAAAAAAAAAAAAAAAAAAA=="
# Free text: any value is accepted (a secret or a token is opaque to the sidecar).
FREE_TEXT = {"CACHE_KEY_SECRET", "SIDECAR_ADMIN_TOKEN"}
BAD: dict[str, list[str]] = {
    "UPSTREAM_URL": ["identity:8000", "http://", "http://host:99999",
                     "http://svc:secret@identity:8000"],
    "REDIS_URL": ["http://cache:6379", "redis://cache:port/0", "redis://cache/0?foo=bar",
                  "redis://cache/0?connection_class=x"],
    "SIDECAR_HOST": ["no-such-host.invalid", "300.1.1.1"],
    "SIDECAR_PORT": ["eighty", "70000", "0", "8080.5", "-1", "nan"],
    "SIDECAR_PUBLIC_ORIGIN": ["identity.example.org", "https://x.org/path"],
    "SIDECAR_ADMIN_HOST": ["no-such-host.invalid"],
    "SIDECAR_ADMIN_PORT": ["9091.7", "70000", "+9090"],
    "CACHE_ENABLED": ["maybe"],
    "CACHE_CREDENTIAL_HEADERS": ["X-Api-Key", "Authorization,Cookie,Bad Header"],
    "CACHE_ENCRYPTION_KEY": ["notbase64!", SIXTEEN_BYTES],
    "CACHE_ENCRYPTION_KEY_PREVIOUS": ["notbase64!", f"{'A' * 43}=,{SIXTEEN_BYTES}"],
    "CACHE_MAX_BODY_BYTES": ["1.5", "0", "1e6"],
    "CACHE_MEMORY_MAX_BYTES": ["lots", "0"],
    "CACHE_LEASE_S": ["0", "soon"],
    "CACHE_LEASE_WAIT_S": ["-1"],
    "REDIS_TIMEOUT_MS": ["-1", "inf"],
    "REDIS_CONNECT_TIMEOUT_MS": ["0"],
    "REDIS_MAX_CONNECTIONS": ["0.5", "0"],
    "REDIS_TLS_CA_FILE": ["/nonexistent/ca.pem"],
    "REDIS_TLS_CERT_FILE": ["/nonexistent/client.crt"],
    "REDIS_TLS_KEY_FILE": ["/nonexistent/client.key"],
    "CACHE_BREAKER_FAILURES": ["0.5", "0", "five"],
    "CACHE_BREAKER_COOLDOWN_S": ["0"],
    "UPSTREAM_CONNECT_TIMEOUT_S": ["0"],
    "UPSTREAM_READ_TIMEOUT_S": ["-5"],
    "UPSTREAM_FILL_TIMEOUT_S": ["nan"],
    "UPSTREAM_KEEPALIVE_S": ["x"],
    "UPSTREAM_MAX_CONNECTIONS": ["2.5"],
    "SIDECAR_SHUTDOWN_TIMEOUT_S": ["0"],
    "SIDECAR_KEEPALIVE_TIMEOUT_S": ["0"],
    "SIDECAR_HEADER_TIMEOUT_S": ["-1"],
    "SIDECAR_RELOAD_INTERVAL_S": ["0"],
    "SIDECAR_ACCESS_LOG_SAMPLE": ["5", "-0.1", "half"],
    "SIDECAR_LOG_LEVEL": ["LOUD", "verbose"],
    "SIDECAR_EVENT_LOOP": ["trio", "libuv"],
    "SIDECAR_WARN_INTERVAL_S": ["0"],
    "CACHE_NEAR_MAX_BYTES": ["1.5", "-1", "lots"],
    "SIDECAR_WORKERS": ["0", "2.5", "two"],
    "CACHE_AUDIT_LOG": ["audit.log", "/nonexistent/dir/audit.log", "/"],
    "CACHE_AUDIT_REQUIRED": ["sometimes"],
    "CACHE_JWT_JWKS_URL": ["idp.example.org/jwks", "ftp://idp/jwks", "https://idp:99999/"],
    "CACHE_JWT_ISSUER": ["https://idp.example.org"],  # without a JWKS URL
    "CACHE_JWT_AUDIENCE": ["identity-api"],
    "CACHE_JWT_LEEWAY_S": ["-1", "600", "soon"],
    "CACHE_JWT_JWKS_REFRESH_S": ["0"],
    "CACHE_JWT_JWKS_MAX_STALE_S": ["-5"],
}


def _cases() -> Iterator[tuple[str, str]]:
    for name, values in BAD.items():
        for value in values:
            yield name, value


def test_every_setting_has_bad_values_here_unless_it_is_free_text() -> None:
    assert set(BAD) | FREE_TEXT == set(ENV_VARS)


@pytest.mark.parametrize("name, value", list(_cases()))
def test_a_bad_value_is_refused_with_the_accepted_form(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    (problem,) = info.value.problems
    assert problem.startswith(f"environment: {name}")
    assert "accepted" in problem or "must" in problem, problem
    if name.startswith("CACHE_ENCRYPTION_KEY"):
        assert value not in problem  # a key, even a bad one, is never echoed


@pytest.mark.parametrize("name, value", [
    ("SIDECAR_ADMIN_PORT", "9091"), ("CACHE_BREAKER_FAILURES", " 3 "),
    ("SIDECAR_ACCESS_LOG_SAMPLE", "0"), ("SIDECAR_ACCESS_LOG_SAMPLE", "1"),
    ("SIDECAR_LOG_LEVEL", "debug"), ("SIDECAR_HOST", "localhost"), ("SIDECAR_HOST", "::1"),
    ("CACHE_ENCRYPTION_KEY", "A" * 43 + "="),
    ("CACHE_ENCRYPTION_KEY_PREVIOUS", f"{'A' * 43}=,{'B' * 43}="),
    ("CACHE_CREDENTIAL_HEADERS", "Authorization,Cookie,X-Api-Key"),
    ("CACHE_JWT_LEEWAY_S", "0"), ("SIDECAR_EVENT_LOOP", "asyncio"),
    ("SIDECAR_EVENT_LOOP", "UVLOOP"),
])
def test_good_values_pass(name: str, value: str) -> None:
    Settings.from_env({name: value})


def test_the_jwks_url_needs_issuer_and_audience() -> None:
    url = {"CACHE_JWT_JWKS_URL": "https://idp.example.org/jwks.json"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(url)
    assert [p.split(" ", 2)[1] for p in info.value.problems] == [
        "CACHE_JWT_ISSUER", "CACHE_JWT_AUDIENCE"]
    settings = Settings.from_env({**url, "CACHE_JWT_ISSUER": "https://idp.example.org",
                                  "CACHE_JWT_AUDIENCE": "identity-api"})
    assert settings.jwt_jwks_url == url["CACHE_JWT_JWKS_URL"]


def test_log_level_is_normalised() -> None:
    assert Settings.from_env({"SIDECAR_LOG_LEVEL": "warning"}).log_level == "WARNING"


class _Recording(dict[str, str]):
    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> str | None:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)  # type: ignore[arg-type]


def test_from_env_reads_exactly_the_listed_variables() -> None:
    env = _Recording()
    Settings.from_env(env)
    assert env.read == set(ENV_VARS)


def test_the_readme_table_lists_every_variable() -> None:
    table = (ROOT / "README.md").read_text().split("| variable |", 1)[1].split("\n\n", 1)[0]
    for name in (*ENV_VARS, *OTHER_ENV_VARS):
        assert f"`{name}`" in table, name


def test_the_secret_example_placeholders_are_refused_by_name() -> None:
    """Applied unedited, the example must stop the sidecar, not run with a junk key."""
    data: Mapping[str, str] = yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"]
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CACHE_ENCRYPTION_KEY": data["cache-encryption-key"]})
    assert "CACHE_ENCRYPTION_KEY is not valid base64" in info.value.problems[0]
