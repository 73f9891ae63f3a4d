"""Process settings from the environment (the seed's variables plus the proxy's own).

Rule TTLs also come from the environment (`CACHE_TTL_*`), but each rule names its own
variable, so those are resolved in `rules.py`, not here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.errors import ConfigError

DEFAULT_CONFIG = Path("config/routes.yaml")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Settings:
    upstream_url: str = "http://127.0.0.1:8000"
    redis_url: str = "memory://"
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "0.0.0.0"
    admin_port: int = 9090
    cache_enabled: bool = True
    key_secret: bytes | None = field(default=None, repr=False)
    credential_headers: tuple[str, ...] = ("Authorization", "Cookie")
    max_body_bytes: int = 1024 * 1024
    memory_max_bytes: int = 64 * 1024 * 1024
    near_max_bytes: int = 32 * 1024 * 1024
    redis_timeout: float = 0.1
    redis_connect_timeout: float = 0.1
    redis_max_connections: int = 64
    breaker_failures: int = 5
    breaker_cooldown: float = 2.0
    upstream_connect_timeout: float = 2.0
    upstream_read_timeout: float = 30.0
    upstream_fill_timeout: float = 30.0
    upstream_keepalive: float = 4.0
    upstream_max_connections: int = 256
    shutdown_timeout: float = 20.0
    keepalive_timeout: float = 75.0  # idle client connection (nginx keepalive_timeout)
    header_timeout: float = 60.0  # to receive a request's headers (nginx client_header_timeout)
    redis_tls_ca: str | None = None
    redis_tls_cert: str | None = None
    redis_tls_key: str | None = None
    reload_interval: float = 5.0
    lease_seconds: float = 3.0
    lease_wait_seconds: float = 1.0
    access_log_sample: float = 1.0
    admin_token: str | None = field(default=None, repr=False)
    encryption_key: str | None = field(default=None, repr=False)
    encryption_key_previous: str | None = field(default=None, repr=False)
    warn_interval: float = 10.0
    # (proto, host[:port]) sent upstream as X-Forwarded-Proto/-Host; None sends neither.
    public_origin: tuple[str, str] | None = None
    workers: int = 1  # proxy processes sharing the port (SO_REUSEPORT); 1: no supervisor

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every `SIDECAR_*`, `CACHE_*`, `REDIS_*` and `UPSTREAM_*` variable.

        All problems are collected so a bad deployment reports them at once.
        """
        env = os.environ if env is None else env
        problems: list[str] = []
        d = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, default).strip() or default

        def number(name: str, default: float, *, scale: float = 1.0, minimum: float = 0) -> float:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            try:
                value = float(raw) * scale
            except ValueError:
                problems.append(f"environment: {name}={raw!r} is not a number")
                return default
            if not math.isfinite(value):
                problems.append(f"environment: {name}={raw!r} is not a finite number")
                return default
            if value <= minimum:
                problems.append(f"environment: {name}={raw!r} must be greater than {minimum}")
                return default
            return value

        def integer(name: str, default: int) -> int:
            return int(number(name, default))

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            if raw.strip().lower() in _TRUE:
                return True
            if raw.strip().lower() in _FALSE:
                return False
            problems.append(f"environment: {name}={raw!r} is not a boolean (true/false)")
            return default

        secret = env.get("CACHE_KEY_SECRET", "")
        credentials = tuple(
            h.strip() for h in env.get("CACHE_CREDENTIAL_HEADERS", "").split(",") if h.strip()
        ) or d.credential_headers
        if not {"authorization", "cookie"} <= {h.lower() for h in credentials}:
            problems.append("environment: CACHE_CREDENTIAL_HEADERS must keep Authorization "
                            "and Cookie (add headers, never remove those)")
        redis_url = text("REDIS_URL", d.redis_url)
        if not redis_url.startswith(("redis://", "rediss://", "unix://", "memory://")):
            problems.append(
                f"environment: REDIS_URL must start with redis://, rediss://, unix:// or "
                f"memory://, got scheme {redis_url.split(':', 1)[0]!r}"
            )
        public_origin = _origin(env.get("SIDECAR_PUBLIC_ORIGIN", "").strip(), problems)
        upstream = text("UPSTREAM_URL", d.upstream_url).rstrip("/")
        if not upstream.startswith(("http://", "https://")):
            problems.append("environment: UPSTREAM_URL must be an http:// or https:// URL")
        settings = cls(
            upstream_url=upstream,
            redis_url=redis_url,
            host=text("SIDECAR_HOST", d.host),
            port=integer("SIDECAR_PORT", d.port),
            admin_host=text("SIDECAR_ADMIN_HOST", d.admin_host),
            admin_port=integer("SIDECAR_ADMIN_PORT", d.admin_port),
            cache_enabled=flag("CACHE_ENABLED", d.cache_enabled),
            key_secret=secret.encode() if secret else None,
            credential_headers=credentials,
            max_body_bytes=integer("CACHE_MAX_BODY_BYTES", d.max_body_bytes),
            memory_max_bytes=integer("CACHE_MEMORY_MAX_BYTES", d.memory_max_bytes),
            near_max_bytes=int(number("CACHE_NEAR_MAX_BYTES", d.near_max_bytes, minimum=-1e-9)),
            redis_timeout=number("REDIS_TIMEOUT_MS", d.redis_timeout, scale=0.001),
            redis_connect_timeout=number(
                "REDIS_CONNECT_TIMEOUT_MS", d.redis_connect_timeout, scale=0.001
            ),
            redis_max_connections=integer("REDIS_MAX_CONNECTIONS", d.redis_max_connections),
            breaker_failures=integer("CACHE_BREAKER_FAILURES", d.breaker_failures),
            breaker_cooldown=number("CACHE_BREAKER_COOLDOWN_S", d.breaker_cooldown),
            upstream_connect_timeout=number(
                "UPSTREAM_CONNECT_TIMEOUT_S", d.upstream_connect_timeout
            ),
            upstream_read_timeout=number("UPSTREAM_READ_TIMEOUT_S", d.upstream_read_timeout),
            upstream_fill_timeout=number("UPSTREAM_FILL_TIMEOUT_S", d.upstream_fill_timeout),
            upstream_keepalive=number("UPSTREAM_KEEPALIVE_S", d.upstream_keepalive),
            upstream_max_connections=integer(
                "UPSTREAM_MAX_CONNECTIONS", d.upstream_max_connections
            ),
            shutdown_timeout=number("SIDECAR_SHUTDOWN_TIMEOUT_S", d.shutdown_timeout),
            keepalive_timeout=number("SIDECAR_KEEPALIVE_TIMEOUT_S", d.keepalive_timeout),
            header_timeout=number("SIDECAR_HEADER_TIMEOUT_S", d.header_timeout),
            redis_tls_ca=env.get("REDIS_TLS_CA_FILE") or None,
            redis_tls_cert=env.get("REDIS_TLS_CERT_FILE") or None,
            redis_tls_key=env.get("REDIS_TLS_KEY_FILE") or None,
            lease_seconds=number("CACHE_LEASE_S", d.lease_seconds),
            lease_wait_seconds=number("CACHE_LEASE_WAIT_S", d.lease_wait_seconds),
            reload_interval=number("SIDECAR_RELOAD_INTERVAL_S", d.reload_interval),
            access_log_sample=number("SIDECAR_ACCESS_LOG_SAMPLE", d.access_log_sample,
                                     minimum=-1e-9),
            admin_token=env.get("SIDECAR_ADMIN_TOKEN") or None,
            encryption_key=env.get("CACHE_ENCRYPTION_KEY") or None,
            encryption_key_previous=env.get("CACHE_ENCRYPTION_KEY_PREVIOUS") or None,
            warn_interval=number("SIDECAR_WARN_INTERVAL_S", d.warn_interval),
            public_origin=public_origin,
            workers=_count(env.get("SIDECAR_WORKERS", ""), "SIDECAR_WORKERS", d.workers, problems),
        )
        if settings.workers > 1 and settings.cache_enabled and redis_url.startswith("memory://"):
            problems.append("environment: SIDECAR_WORKERS>1 needs a shared cache: with "
                            "REDIS_URL=memory:// each worker would keep copies a write through "
                            "another worker cannot erase; use redis:// (or SIDECAR_WORKERS=1)")
        if problems:
            raise ConfigError(problems)
        return settings

    def describe(self) -> dict[str, object]:
        """The effective settings for the startup log, secrets masked."""
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name in {"key_secret", "admin_token", "encryption_key",
                        "encryption_key_previous"}:
                value = "set" if value else "unset"
            elif name in {"redis_url", "upstream_url"}:
                value = _mask_url(str(value))
            out[name] = value
        return out


_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", re.ASCII)


def _origin(raw: str, problems: list[str]) -> tuple[str, str] | None:
    """`https://identity.example.org[:port]` as (proto, host): what links should say."""
    if not raw:
        return None
    scheme, sep, rest = raw.rstrip("/").partition("://")
    host, _, port = rest.rpartition(":") if rest.count(":") == 1 or "]:" in rest else (
        rest, "", "")
    if (not sep or scheme.lower() not in ("http", "https") or not _HOST.fullmatch(host)
            or (port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536))):
        problems.append(f"environment: SIDECAR_PUBLIC_ORIGIN={raw!r} must be an origin like "
                        "https://identity.example.org or https://host:8443 (no path)")
        return None
    return scheme.lower(), rest


def _mask_url(url: str) -> str:
    """Hide a password in `redis://user:password@host` and in `?password=`."""
    scheme, sep, rest = url.partition("://")
    rest, qsep, query = rest.partition("?")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    if query:
        query = "&".join(
            f"{k}=***" if k.lower() == "password" else f"{k}{eq}{v}"
            for k, eq, v in (p.partition("=") for p in query.split("&")))
    return f"{scheme}{sep}{rest}{qsep}{query}"


def _count(raw: str, name: str, default: int, problems: list[str]) -> int:
    """A whole number >= 1 in ASCII digits; `2.5`, `2.0`, `0`, `-1`, `٢` are refused."""
    raw = raw.strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
        problems.append(f"environment: {name}={raw!r} must be a whole number of at least 1")
        return default
    return int(raw)
