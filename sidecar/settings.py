"""Process settings from the environment (the seed's variables plus the proxy's own).

Rule TTLs also come from the environment (`CACHE_TTL_*`), but each rule names its own
variable, so those are resolved in `rules.py`, not here.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.codec import parse_key
from sidecar.errors import ConfigError
from sidecar.redis_url import FORMS, parse_target

# The rules shipped inside the package (a copy of config/routes.yaml), so the default
# works from any directory; --config and SIDECAR_CONFIG win.
DEFAULT_CONFIG = Path(__file__).resolve().with_name("routes.yaml")
# Every variable `Settings.from_env` reads (tests/unit/test_settings_refusals.py holds each
# to a bad value and to the README table). Rule TTLs (`CACHE_TTL_DEFAULT` and each rule's
# `ttl_env`) are read by rules.py, SIDECAR_CONFIG by cli.py, OTEL_* by telemetry.py.
ENV_VARS = (
    "UPSTREAM_URL", "REDIS_URL", "SIDECAR_HOST", "SIDECAR_PORT", "SIDECAR_PUBLIC_ORIGIN",
    "SIDECAR_ADMIN_HOST", "SIDECAR_ADMIN_PORT", "CACHE_ENABLED", "CACHE_KEY_SECRET",
    "CACHE_CREDENTIAL_HEADERS", "CACHE_ENCRYPTION_KEY", "CACHE_ENCRYPTION_KEY_PREVIOUS",
    "CACHE_MAX_BODY_BYTES", "CACHE_MEMORY_MAX_BYTES", "CACHE_LEASE_S", "CACHE_LEASE_WAIT_S",
    "REDIS_TIMEOUT_MS", "REDIS_CONNECT_TIMEOUT_MS", "REDIS_MAX_CONNECTIONS",
    "REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE",
    "CACHE_BREAKER_FAILURES", "CACHE_BREAKER_COOLDOWN_S", "UPSTREAM_CONNECT_TIMEOUT_S",
    "UPSTREAM_READ_TIMEOUT_S", "UPSTREAM_FILL_TIMEOUT_S", "UPSTREAM_KEEPALIVE_S",
    "UPSTREAM_MAX_CONNECTIONS", "SIDECAR_SHUTDOWN_TIMEOUT_S", "SIDECAR_KEEPALIVE_TIMEOUT_S",
    "SIDECAR_HEADER_TIMEOUT_S", "SIDECAR_RELOAD_INTERVAL_S", "SIDECAR_ADMIN_TOKEN",
    "SIDECAR_ACCESS_LOG_SAMPLE", "SIDECAR_LOG_LEVEL", "SIDECAR_WARN_INTERVAL_S",
    "CACHE_NEAR_MAX_BYTES", "SIDECAR_WORKERS", "CACHE_AUDIT_LOG", "CACHE_AUDIT_REQUIRED",
    "CACHE_JWT_JWKS_URL", "CACHE_JWT_ISSUER", "CACHE_JWT_AUDIENCE", "CACHE_JWT_LEEWAY_S",
    "CACHE_JWT_JWKS_REFRESH_S", "CACHE_JWT_JWKS_MAX_STALE_S", "SIDECAR_EVENT_LOOP",
)
OTHER_ENV_VARS = ("SIDECAR_CONFIG", "CACHE_TTL_DEFAULT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EVENT_LOOPS = ("uvloop", "asyncio")


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
    log_level: str = "INFO"
    event_loop: str = "uvloop"  # see event_loop.py
    audit_log: str = "stdout"  # the audit sink of cached reads: "stdout" or a file path
    audit_required: bool = False  # a cached read whose audit line fails goes upstream
    # Token verification for `share:` rules (tokens.py, jwks.py); None: nobody is shared.
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: float = 30.0
    jwt_jwks_refresh: float = 300.0
    jwt_jwks_max_stale: float = 3600.0

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

        def number(name: str, default: float, *, scale: float = 1.0, minimum: float = 0,
                   maximum: float | None = None, accepted: str = "") -> float:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            accepted = accepted or f"a number greater than {minimum:g}" + (
                "" if maximum is None else f" and at most {maximum:g}")
            try:
                value = float(raw) * scale
            except ValueError:
                problems.append(f"environment: {name}={raw!r} is not a number "
                                f"(accepted: {accepted})")
                return default
            if not math.isfinite(value):
                problems.append(f"environment: {name}={raw!r} is not a finite number "
                                f"(accepted: {accepted})")
                return default
            if value <= minimum or (maximum is not None and value > maximum):
                problems.append(f"environment: {name}={raw!r} is out of range "
                                f"(accepted: {accepted})")
                return default
            return value

        def integer(name: str, default: int, *, minimum: int = 1,
                    maximum: int | None = None) -> int:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            accepted = (f"a whole number from {minimum} to {maximum}" if maximum is not None
                        else f"a whole number of at least {minimum}")
            text = raw.strip()
            # int() also takes "+5", "5_0" and non-ASCII digits: accept only what we print.
            if not (text.isascii() and text.isdigit()):
                problems.append(f"environment: {name}={raw!r} is not a whole number "
                                f"(accepted: {accepted})")
                return default
            value = int(text)
            if value < minimum or (maximum is not None and value > maximum):
                problems.append(f"environment: {name}={raw!r} is out of range "
                                f"(accepted: {accepted})")
                return default
            return value

        def port(name: str, default: int) -> int:
            return integer(name, default, minimum=1, maximum=65535)

        def host(name: str, default: str) -> str:
            value = text(name, default)
            problem = _bind_problem(value)
            if problem:
                problems.append(f"environment: {name}={value!r} {problem} (accepted: an IP "
                                "address or a host name this machine resolves, e.g. 0.0.0.0 "
                                "or 127.0.0.1)")
                return default
            return value

        def readable(name: str) -> str | None:
            value = env.get(name, "").strip() or None
            if value is not None:
                try:
                    with open(value, "rb"):
                        pass
                except OSError as exc:
                    problems.append(f"environment: {name}={value!r} cannot be read "
                                    f"({exc.strerror}) (accepted: a readable PEM file)")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            if raw.strip().lower() in _TRUE:
                return True
            if raw.strip().lower() in _FALSE:
                return False
            problems.append(f"environment: {name}={raw!r} is not a boolean "
                            "(accepted: true/false, 1/0, yes/no, on/off)")
            return default

        def key(name: str, *, several: bool = False) -> str | None:
            raw = env.get(name) or None
            if raw is None:
                return None
            for part in raw.split(",") if several else [raw]:
                if part.strip() or not several:
                    try:
                        parse_key(name, part)
                    except ConfigError as exc:
                        problems.extend(exc.problems)
            return raw

        level = text("SIDECAR_LOG_LEVEL", d.log_level).upper()
        if level not in LOG_LEVELS:
            problems.append(f"environment: SIDECAR_LOG_LEVEL={env['SIDECAR_LOG_LEVEL']!r} is "
                            f"not a log level (accepted: {', '.join(LOG_LEVELS)})")
            level = d.log_level
        loop = text("SIDECAR_EVENT_LOOP", d.event_loop).lower()
        if loop not in EVENT_LOOPS:
            problems.append(f"environment: SIDECAR_EVENT_LOOP={env['SIDECAR_EVENT_LOOP']!r} "
                            f"is not an event loop (accepted: {', '.join(EVENT_LOOPS)})")
            loop = d.event_loop
        secret = env.get("CACHE_KEY_SECRET", "")
        credentials = tuple(
            h.strip() for h in env.get("CACHE_CREDENTIAL_HEADERS", "").split(",") if h.strip()
        ) or d.credential_headers
        for header in credentials:
            if not _TOKEN.fullmatch(header):
                problems.append(f"environment: CACHE_CREDENTIAL_HEADERS: {header!r} is not a "
                                "header name (accepted: comma-separated names like X-Api-Key)")
        if not {"authorization", "cookie"} <= {h.lower() for h in credentials}:
            problems.append("environment: CACHE_CREDENTIAL_HEADERS must keep Authorization "
                            "and Cookie (add headers, never remove those)")
        redis_url = text("REDIS_URL", d.redis_url)
        if not redis_url.startswith(REDIS_SCHEMES):
            problems.append(
                "environment: REDIS_URL must start with redis://, rediss://, unix://, "
                "redis+cluster://, rediss+cluster://, redis+sentinel://, rediss+sentinel:// or "
                f"memory://, got scheme {redis_url.split(':', 1)[0]!r}"
            )
        elif not redis_url.startswith("memory://") and (problem := _redis_problem(redis_url)):
            problems.append(f"environment: REDIS_URL={mask_url(redis_url)!r} {problem} "
                            f"(accepted: {_redis_form(redis_url)})")
        public_origin = _origin(env.get("SIDECAR_PUBLIC_ORIGIN", "").strip(), problems)
        upstream = text("UPSTREAM_URL", d.upstream_url).rstrip("/")
        if not upstream.startswith(("http://", "https://")) or not _upstream_ok(upstream):
            problems.append(f"environment: UPSTREAM_URL={mask_url(upstream)!r} is not an "
                            "http:// or https:// URL (accepted: http://host[:port], e.g. "
                            "http://127.0.0.1:8000)")
        elif _has_credentials(upstream):
            # aiohttp refuses a URL's credentials next to an Authorization header, which
            # every authenticated caller's request carries: each would fail.
            problems.append(f"environment: UPSTREAM_URL={mask_url(upstream)!r} carries "
                            "credentials; the callers' own Authorization goes upstream "
                            "(accepted: http://host[:port] without user:password@)")
        settings = cls(
            upstream_url=upstream,
            redis_url=redis_url,
            host=host("SIDECAR_HOST", d.host),
            port=port("SIDECAR_PORT", d.port),
            admin_host=host("SIDECAR_ADMIN_HOST", d.admin_host),
            admin_port=port("SIDECAR_ADMIN_PORT", d.admin_port),
            cache_enabled=flag("CACHE_ENABLED", d.cache_enabled),
            key_secret=secret.encode() if secret else None,
            credential_headers=credentials,
            max_body_bytes=integer("CACHE_MAX_BODY_BYTES", d.max_body_bytes),
            memory_max_bytes=integer("CACHE_MEMORY_MAX_BYTES", d.memory_max_bytes),
            near_max_bytes=integer("CACHE_NEAR_MAX_BYTES", d.near_max_bytes, minimum=0),
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
            redis_tls_ca=readable("REDIS_TLS_CA_FILE"),
            redis_tls_cert=readable("REDIS_TLS_CERT_FILE"),
            redis_tls_key=readable("REDIS_TLS_KEY_FILE"),
            lease_seconds=number("CACHE_LEASE_S", d.lease_seconds),
            lease_wait_seconds=number("CACHE_LEASE_WAIT_S", d.lease_wait_seconds),
            reload_interval=number("SIDECAR_RELOAD_INTERVAL_S", d.reload_interval),
            access_log_sample=number("SIDECAR_ACCESS_LOG_SAMPLE", d.access_log_sample,
                                     minimum=-1e-9, maximum=1.0,
                                     accepted="a fraction from 0 to 1, e.g. 0.1"),
            admin_token=env.get("SIDECAR_ADMIN_TOKEN") or None,
            encryption_key=key("CACHE_ENCRYPTION_KEY"),
            encryption_key_previous=key("CACHE_ENCRYPTION_KEY_PREVIOUS", several=True),
            warn_interval=number("SIDECAR_WARN_INTERVAL_S", d.warn_interval),
            public_origin=public_origin,
            workers=_count(env.get("SIDECAR_WORKERS", ""), "SIDECAR_WORKERS", d.workers, problems),
            log_level=level,
            event_loop=loop,
            audit_log=_audit_target(text("CACHE_AUDIT_LOG", d.audit_log), problems),
            audit_required=flag("CACHE_AUDIT_REQUIRED", d.audit_required),
            jwt_leeway=number("CACHE_JWT_LEEWAY_S", d.jwt_leeway, minimum=-1e-9,
                              maximum=300.0, accepted="seconds from 0 to 300, e.g. 30"),
            jwt_jwks_refresh=number("CACHE_JWT_JWKS_REFRESH_S", d.jwt_jwks_refresh),
            jwt_jwks_max_stale=number("CACHE_JWT_JWKS_MAX_STALE_S", d.jwt_jwks_max_stale),
            **_jwt(env, problems),
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
                value = mask_url(str(value))
            out[name] = value
        return out


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)  # RFC 9110 field name
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


def _jwt(env: Mapping[str, str], problems: list[str]) -> dict[str, str | None]:
    """The JWKS URL with the issuer and audience it needs (all three, or none)."""
    url, issuer, audience = (env.get(name, "").strip() or None for name in (
        "CACHE_JWT_JWKS_URL", "CACHE_JWT_ISSUER", "CACHE_JWT_AUDIENCE"))
    if url is not None and not (url.startswith(("http://", "https://")) and _upstream_ok(url)):
        problems.append(f"environment: CACHE_JWT_JWKS_URL={url!r} is not an http:// or "
                        "https:// URL (accepted: e.g. https://idp.example.org/.well-known/"
                        "jwks.json)")
        url = None
    elif url is not None:
        for name, value in (("CACHE_JWT_ISSUER", issuer), ("CACHE_JWT_AUDIENCE", audience)):
            if value is None:
                problems.append(f"environment: {name} must be set with CACHE_JWT_JWKS_URL "
                                "(a token of another issuer or audience must never share)")
    else:
        for name, value in (("CACHE_JWT_ISSUER", issuer), ("CACHE_JWT_AUDIENCE", audience)):
            if value is not None:
                problems.append(f"environment: {name} is set but CACHE_JWT_JWKS_URL is not "
                                "(accepted: all three set, or none)")
    return {"jwt_jwks_url": url, "jwt_issuer": issuer, "jwt_audience": audience}


def _audit_target(value: str, problems: list[str]) -> str:
    """`stdout`, or an absolute file path in a directory that exists."""
    if value == "stdout":
        return value
    path = Path(value)
    problem = ("is not an absolute path" if not path.is_absolute()
               else "is a directory" if path.is_dir()
               else "is in a directory that does not exist" if not path.parent.is_dir()
               else None)
    if problem:
        problems.append(f"environment: CACHE_AUDIT_LOG={value!r} {problem} (accepted: "
                        "stdout, or an absolute file path such as /var/log/sidecar/audit.log)")
        return "stdout"
    return value


def _bind_problem(host: str) -> str | None:
    """Why the listener could not bind `host`, resolved as the listener will resolve it.

    Listen addresses are resolved at validation (an IP literal or /etc/hosts costs
    nothing); the upstream and Redis hosts are not, as they may come up after the sidecar.
    """
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"does not resolve ({exc.args[-1] if exc.args else exc})"
    return None


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "memory://", "redis+cluster://",
                 "rediss+cluster://", "redis+sentinel://", "rediss+sentinel://")


def _redis_form(url: str) -> str:
    """The accepted form for the URL's scheme, shown with its problem."""
    scheme = url.split("://", 1)[0].lower()
    kind = "cluster" if scheme.endswith("+cluster") else (
        "sentinel" if scheme.endswith("+sentinel") else "")
    return FORMS.get(kind, "redis://[user:password@]host[:port][/db]")


def _redis_problem(url: str) -> str | None:
    """What the parser the backend uses (redis-py's, or `redis_url` for HA) says about `url`."""
    from redis.asyncio.connection import parse_url  # only when Redis is configured

    if "+" in url.split("://", 1)[0]:
        try:
            parse_target(url)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        options = parse_url(url)
    except (ValueError, TypeError) as exc:
        return f"does not parse ({exc})".replace(url, "<url>")
    if not url.startswith("unix://") and not options.get("host"):
        return "names no host"
    # redis-py hands unknown query arguments to the connection class, which then refuses
    # them at start-up: timeouts, pools and TLS come from the REDIS_* variables instead.
    _, _, query = url.partition("?")
    odd = sorted({k for k, _, _ in (p.partition("=") for p in query.split("&") if p)}
                 - _REDIS_QUERY)
    if odd:
        return (f"has query arguments the sidecar does not take ({', '.join(odd)}; only "
                "db and password, the rest comes from the REDIS_* variables)")
    return None


_REDIS_QUERY = frozenset({"db", "password"})


def _upstream_ok(url: str) -> bool:
    from yarl import URL

    try:
        parsed = URL(url)
        return bool(parsed.host) and (parsed.port is None or 0 < parsed.port < 65536)
    except ValueError:
        return False


def _has_credentials(url: str) -> bool:
    from yarl import URL

    parsed = URL(url)
    return parsed.user is not None or parsed.password is not None


def mask_url(url: str) -> str:
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
