"""Revalidating a stale entry with the origin (RFC 9111 §4.3): pure header work.

An expired entry that carries a validator is not thrown away: the fill sends a conditional
GET, and a 304 refreshes the stored headers and lifetime while the stored body is kept, so
the service skips building the body again (its PostgreSQL and FHIR reads, if it validates
cheaply) and the bytes are not sent twice.
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.entry import Entry
from sidecar.headers import COMPUTED_PER_ANSWER, HOP_BY_HOP, connection_named
from sidecar.policy import weak_tag

# The sidecar's own ETag for an origin that sent none (see fetch.strong_etag): the origin
# never issued it, so it cannot validate it.
SYNTHETIC_ETAG_PREFIX = '"sc-'
# RFC 9111 §3.2: a 304 never updates Content-Length; the stored body also depends on its
# Content-Encoding, so that one is kept as stored too.
_NOT_UPDATED = COMPUTED_PER_ANSWER | HOP_BY_HOP | {"content-encoding"}


def conditional_headers(stored: Entry) -> list[tuple[str, str]]:
    """If-None-Match / If-Modified-Since for the stored validators (RFC 9110 §13.1)."""
    out = []
    etag = stored.header("ETag")
    if etag and not etag.startswith(SYNTHETIC_ETAG_PREFIX):
        out.append(("If-None-Match", etag))
    last_modified = stored.header("Last-Modified")
    if last_modified:
        out.append(("If-Modified-Since", last_modified))
    return out


def has_validator(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> bool:
    """The origin's own ETag or Last-Modified: something a conditional GET can send."""
    etag = headers.get("ETag", "")
    return bool((etag and not etag.startswith(SYNTHETIC_ETAG_PREFIX))
                or headers.get("Last-Modified"))


def refreshed_headers(
    stored: Entry, fresh: CIMultiDictProxy[str] | CIMultiDict[str]
) -> CIMultiDict[str] | None:
    """The stored headers updated by a 304's (RFC 9111 §4.3.4), or None if it does not apply.

    A 304 naming a different entity tag is about another representation: nothing is
    updated, and the caller fetches the whole response again.
    """
    new_tag, old_tag = fresh.get("ETag"), stored.header("ETag")
    if new_tag is not None and old_tag is not None and weak_tag(new_tag) != weak_tag(old_tag):
        return None
    skip = _NOT_UPDATED | connection_named(fresh)
    updates = [(k, v) for k, v in fresh.items() if k.lower() not in skip]
    replaced = {k.lower() for k, _ in updates}
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in stored.headers if k.lower() not in replaced)
    out.extend(updates)
    return out
