"""Process settings from the environment: defaults, parsing, one error for every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.settings import Settings


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_timeout == 0.1
    assert settings.redis_connect_timeout == 0.1
    assert settings.redis_url == "memory://"
    assert settings.upstream_url == "http://127.0.0.1:8000"
    assert (settings.port, settings.admin_port) == (8080, 9090)
    assert settings.cache_enabled is True
    assert settings.key_secret is None
    assert (settings.breaker_failures, settings.breaker_cooldown) == (5, 2.0)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.admin_token is None and settings.encryption_key is None


def test_blank_values_mean_the_default() -> None:
    env = {"SIDECAR_PORT": " ", "REDIS_TIMEOUT_MS": "", "CACHE_ENABLED": "  ",
           "REDIS_URL": " ", "UPSTREAM_URL": ""}
    assert Settings.from_env(env) == Settings()


def test_values_are_parsed(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not checked here")
    settings = Settings.from_env({
        "UPSTREAM_URL": " https://identity.internal:8443/ ",
        "REDIS_URL": "rediss://cache:6380/2",
        "SIDECAR_PORT": "9000",
        "SIDECAR_HOST": "127.0.0.1",
        "REDIS_TIMEOUT_MS": "250",
        "REDIS_CONNECT_TIMEOUT_MS": "50",
        "CACHE_ENABLED": "Off",
        "CACHE_KEY_SECRET": "s3cret",
        "CACHE_BREAKER_FAILURES": "3",
        "CACHE_BREAKER_COOLDOWN_S": "0.5",
        "CACHE_MAX_BODY_BYTES": "2048",
        "SIDECAR_ACCESS_LOG_SAMPLE": "0",
        "REDIS_TLS_CA_FILE": str(tmp_path / "ca.pem"),
    })
    assert settings.upstream_url == "https://identity.internal:8443"
    assert settings.redis_url == "rediss://cache:6380/2"
    assert (settings.port, settings.host) == (9000, "127.0.0.1")
    assert settings.redis_timeout == pytest.approx(0.25)
    assert settings.redis_connect_timeout == pytest.approx(0.05)
    assert settings.cache_enabled is False
    assert settings.key_secret == b"s3cret"
    assert (settings.breaker_failures, settings.breaker_cooldown) == (3, 0.5)
    assert settings.max_body_bytes == 2048
    assert settings.access_log_sample == 0
    assert settings.redis_tls_ca == str(tmp_path / "ca.pem")


@pytest.mark.parametrize("raw, value", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("False", False), ("no", False), ("off", False),
])
def test_booleans(raw: str, value: bool) -> None:
    assert Settings.from_env({"CACHE_ENABLED": raw}).cache_enabled is value


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h", "unix:///run/redis.sock",
                                 "memory://"])
def test_accepted_redis_urls(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


def test_every_bad_value_is_reported_in_one_error() -> None:
    env = {
        "SIDECAR_PORT": "eighty",
        "REDIS_TIMEOUT_MS": "-1",
        "CACHE_BREAKER_COOLDOWN_S": "0",
        "CACHE_ENABLED": "maybe",
        "REDIS_URL": "http://cache:6379",
        "UPSTREAM_URL": "identity:8000",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    problems = info.value.problems
    assert len(problems) == 6, problems
    expected = [
        "SIDECAR_PORT='eighty' is not a whole number (accepted: a whole number from 1 to 65535)",
        "REDIS_TIMEOUT_MS='-1' is out of range (accepted: a number greater than 0)",
        "CACHE_BREAKER_COOLDOWN_S='0' is out of range (accepted: a number greater than 0)",
        "CACHE_ENABLED='maybe' is not a boolean",
        "REDIS_URL must start with redis://",
        "UPSTREAM_URL='identity:8000' is not an http:// or https:// URL",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert all(p.startswith("environment: ") for p in problems)


def test_a_bad_redis_url_does_not_echo_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@cache:6379"})
    assert "hunter2" not in str(info.value)
    assert "'http'" in str(info.value)



def test_client_connection_timeouts_default_to_nginx_values_and_must_be_positive() -> None:
    settings = Settings.from_env({})
    assert (settings.keepalive_timeout, settings.header_timeout) == (75.0, 60.0)
    parsed = Settings.from_env({"SIDECAR_KEEPALIVE_TIMEOUT_S": "5",
                                "SIDECAR_HEADER_TIMEOUT_S": "0.5"})
    assert (parsed.keepalive_timeout, parsed.header_timeout) == (5.0, 0.5)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEEPALIVE_TIMEOUT_S": "0", "SIDECAR_HEADER_TIMEOUT_S": "-1"})
    assert len(info.value.problems) == 2
    assert "SIDECAR_KEEPALIVE_TIMEOUT_S='0' is out of range" in info.value.problems[0]
    assert "SIDECAR_HEADER_TIMEOUT_S='-1' is out of range" in info.value.problems[1]

@pytest.mark.parametrize("name, raw", [
    ("SIDECAR_PORT", "nan"), ("SIDECAR_PORT", "inf"),
    ("REDIS_TIMEOUT_MS", "nan"), ("REDIS_TIMEOUT_MS", "inf"),
])
def test_non_finite_numbers_are_config_errors(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: raw})
    assert name in str(info.value)


SECRETS = {
    "CACHE_KEY_SECRET": "key-secret-value",
    "SIDECAR_ADMIN_TOKEN": "admin-token-value",
    "CACHE_ENCRYPTION_KEY": "ZW5jcnlwdGlvbi1rZXktdmFsdWUtMzItYnl0ZXMhISE=",
    "CACHE_ENCRYPTION_KEY_PREVIOUS": "cHJldmlvdXMta2V5LXZhbHVlLW9mLTMyLWJ5dGVzISE=",
}


def test_describe_masks_secrets_and_the_redis_password() -> None:
    settings = Settings.from_env({**SECRETS, "REDIS_URL": "redis://app:hunter2@cache:6379/0"})
    described = settings.describe()
    assert described["redis_url"] == "redis://app:***@cache:6379/0"
    for name in ("key_secret", "admin_token", "encryption_key", "encryption_key_previous"):
        assert described[name] == "set"
    text = repr(described)
    assert "hunter2" not in text
    for secret in SECRETS.values():
        assert secret not in text
    assert described["redis_timeout"] == 0.1


def test_describe_says_unset_for_missing_secrets() -> None:
    described = Settings.from_env({}).describe()
    assert described["key_secret"] == "unset"
    assert described["admin_token"] == "unset"
    assert described["redis_url"] == "memory://"


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@cache:6379", "redis://:***@cache:6379"),
    ("rediss://app:p%40ss@word@cache", "rediss://app:***@cache"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
])
def test_describe_masks_passwords_in_the_authority(url: str, shown: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).describe()["redis_url"] == shown


@pytest.mark.parametrize("url", ["unix:///run/redis.sock?db=0&password=hunter2",
                                 "redis://cache:6379/0?password=hunter2"])
def test_describe_masks_a_password_in_the_query(url: str) -> None:
    assert "hunter2" not in repr(Settings.from_env({"REDIS_URL": url}).describe())


def test_workers_default_to_one_and_take_whole_numbers() -> None:
    assert Settings.from_env({}).workers == 1
    redis = {"REDIS_URL": "redis://cache:6379/0"}
    assert Settings.from_env({"SIDECAR_WORKERS": " 2 ", **redis}).workers == 2
    assert Settings.from_env({"SIDECAR_WORKERS": ""}).workers == 1


def test_several_workers_refuse_a_per_process_cache() -> None:
    with pytest.raises(ConfigError, match="SIDECAR_WORKERS>1 needs a shared cache"):
        Settings.from_env({"SIDECAR_WORKERS": "2", "REDIS_URL": "memory://"})
    assert Settings.from_env({"SIDECAR_WORKERS": "2", "CACHE_ENABLED": "false"}).workers == 2


@pytest.mark.parametrize("raw", ["0", "-1", "2.5", "2.0", "1e1", "two", "٢", "+2", "nan"])
def test_workers_refuse_anything_but_a_whole_number_of_at_least_one(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_WORKERS": raw})
    assert info.value.problems == [
        f"environment: SIDECAR_WORKERS={raw!r} must be a whole number of at least 1"]
