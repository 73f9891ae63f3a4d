"""May this request use the cache, may this response be stored, may this entry be served.

Pure decisions over headers and numbers, in the spirit of hishel's sans-IO core: the
proxy asks, these answer with a reason, and the reason becomes `Cache-Status` detail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.headers import has_token

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def request_bypass_reason(method: str, headers: Headers, has_body: bool) -> str | None:
    """None when the request may be answered from and stored into the cache."""
    if method not in ("GET", "HEAD"):
        return "method"
    if has_body:
        return "request-body"
    if "Upgrade" in headers:
        return "upgrade"
    if has_token(headers, "Cache-Control", "no-store"):
        return "request-no-store"
    return None


def wants_refresh(headers: Headers) -> bool:
    """`Cache-Control: no-cache` (or `Pragma: no-cache`) asks for a fresh copy."""
    return has_token(headers, "Cache-Control", "no-cache") or (
        "Cache-Control" not in headers and has_token(headers, "Pragma", "no-cache")
    )


# Vary on anything else would need the request header in the variant; when in doubt, bypass.
_VARY_COVERED = frozenset({"accept-encoding", "authorization", "cookie"})


def response_not_storable_reason(
    status: int, headers: Headers, *, honours_origin: bool = False,
    keyed: tuple[str, ...] = (),
) -> str | None:
    """None when a complete upstream response with these headers may be stored.

    `honours_origin` (`mode: rfc9111`): `no-cache` means "store, validate before each use"
    (RFC 9111 §5.2.2.4) rather than "do not store". `keyed`: the rule's `vary:` headers,
    which are part of the variant, so a `Vary` on them is covered (RFC 9111 §4.1).
    """
    if status != 200:
        return "status"
    if "Set-Cookie" in headers or "Set-Cookie2" in headers:
        return "set-cookie"
    for directive in ("no-store", "private") if honours_origin else (
            "no-store", "private", "no-cache"):
        if has_token(headers, "Cache-Control", directive):
            return f"response-{directive}"
    for value in headers.getall("Vary", []):
        for name in value.split(","):
            name = name.strip().lower()
            if name == "*":
                return "vary-star"
            if name and name not in _VARY_COVERED and name not in keyed:
                return "vary"
    if "Content-Range" in headers:
        return "partial"
    coding = headers.get("Content-Encoding", "identity").strip().lower()
    if "," in coding:
        return "content-encoding"
    return None


def coding_acceptable(content_encoding: str | None, accepted: frozenset[str]) -> bool:
    """A stored body is served only in a coding the caller accepts."""
    coding = (content_encoding or "identity").strip().lower()
    return coding == "identity" or coding in accepted


def not_modified(
    headers: Headers, etag: str | None, last_modified: str | None
) -> bool:
    """RFC 9110 §13.1: If-None-Match wins over If-Modified-Since (weak comparison)."""
    inm = headers.getall("If-None-Match", [])
    if inm:
        if etag is None:
            return False
        tags = {t.strip() for v in inm for t in v.split(",")}
        return "*" in tags or weak_tag(etag) in {weak_tag(t) for t in tags}
    since = http_date(headers.get("If-Modified-Since"))
    if since is None:
        return False
    modified = http_date(last_modified)
    return modified is not None and modified <= since


def http_date(value: str | None) -> datetime | None:
    """An HTTP date (RFC 9110 §5.6.7), or None when absent or not a date."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # asctime and `-0000` dates parse naive; HTTP dates are always UTC (RFC 9110 §5.6.7).
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def weak_tag(tag: str) -> str:
    """An entity tag for the weak comparison (RFC 9110 §8.8.3.2)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
