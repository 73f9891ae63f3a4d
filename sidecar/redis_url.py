"""`REDIS_URL` for the HA topologies, parsed once into a value both settings and the backend
use: validation and connection can then never disagree about what a URL means.

    redis+cluster://[user[:password]@]host:port[,host:port...][/0]
    redis+sentinel://[user[:password]@]host:port[,host:port...]/SERVICE[/DB]
    rediss+cluster://, rediss+sentinel://   the same over TLS (REDIS_TLS_* files)

Plain `redis://`, `rediss://` and `unix://` stay redis-py's own (`from_url`); they parse here
as `kind="standalone"` and are checked by redis-py's parser in `settings.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
FORMS = {
    "cluster": "redis+cluster://[user:password@]host:port[,host:port...]",
    "sentinel": "redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]",
}
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", re.ASCII)
_SERVICE = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: str  # "standalone", "cluster" or "sentinel"
    tls: bool
    nodes: tuple[tuple[str, int], ...] = ()  # seed nodes, or the Sentinels
    username: str | None = None
    password: str | None = None
    service: str = ""  # the Sentinel service (master) name
    db: int = 0


def parse_target(url: str) -> RedisTarget:
    """The topology `url` names; ValueError with the reason (never the password) if malformed."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        kind = "cluster"
    elif scheme in SENTINEL_SCHEMES:
        kind = "sentinel"
    else:
        return RedisTarget("standalone", scheme == "rediss")
    if not sep:
        raise ValueError("has no '://'")
    rest = rest.split("?", 1)[0]
    authority, _, path = rest.partition("/")
    username = password = None
    if "@" in authority:
        creds, _, authority = authority.rpartition("@")
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part, _DEFAULT_PORT[kind]) for part in authority.split(","))
    parts = [p for p in path.split("/") if p] if path else []
    service, db = "", 0
    if kind == "sentinel":
        if not parts:
            raise ValueError("names no service (the Sentinel master name after the hosts)")
        service = parts.pop(0)
        if not _SERVICE.fullmatch(service):
            raise ValueError(f"has an odd service name {service!r}")
    if len(parts) > 1:
        raise ValueError("has too many path parts")
    if parts:
        db = _db(parts[0])
        if kind == "cluster" and db != 0:
            raise ValueError("names a database other than 0 (a cluster has only db 0)")
    return RedisTarget(kind, scheme.startswith("rediss"), nodes, username, password, service, db)


def _node(text: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise ValueError("has an empty host in its host list")
    host, port = text, ""
    if text.startswith("["):
        host, _, tail = text.partition("]")
        host += "]"
        port = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise ValueError(f"has an odd host {text!r}")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not _HOST.fullmatch(host):
        raise ValueError(f"has an odd host {host!r}")
    if not port:
        return host.strip("[]"), default_port
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"has a bad port {port!r} (a port is 1 to 65535)")
    return host.strip("[]"), int(port)


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"has a database {text!r} that is not a whole number")
    return int(text)
