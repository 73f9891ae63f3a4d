"""Which rule, if any, a request falls under, and the exact key it addresses.

Pure functions over the raw request target: matching happens before any percent-decoding,
so `%34%32`, `42%0A` or `..%2F43` simply do not match and pass through uncached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from sidecar.rules import Rule, RuleSet

# What pydantic's int parsing accepts: ` +4_2.00 ` is 42 to the upstream.
_INTEGER = re.compile(r"\s*([+-]?[0-9]+(?:_[0-9]+)*)(?:\.0*)?\s*", re.ASCII)
# Every parameter value must stay one key segment, whatever a rule's pattern allows.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
# Last line of defence: whatever a rule's patterns allow, a key never leaves this alphabet.
SAFE_KEY = re.compile(r"[a-z0-9_-]+(?::[A-Za-z0-9_-]+)+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    key: str
    query: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoMatch:
    """Why a request is not cacheable; `rule` is set when the path did match one."""

    reason: str
    rule: Rule | None = None


def split_target(raw_target: str) -> tuple[str, str | None]:
    path, sep, query = raw_target.partition("?")
    return path, (query if sep else None)


def match_rule(rules: RuleSet, method: str, raw_target: str) -> Match | NoMatch:
    path, query = split_target(raw_target)
    for rule in rules.rules:
        m = rule.regex.fullmatch(path)
        if m is None:
            continue
        if method not in rule.methods:
            return NoMatch("method", rule)
        allowed = _allowed_query(rule, query)
        if allowed is None:
            return NoMatch("query", rule)
        params = m.groupdict()
        if not all(_SAFE_VALUE.fullmatch(v) for v in params.values()):
            return NoMatch("key", rule)
        key = rule.key_for(params)
        if not key.startswith(rules.service + ":") or not SAFE_KEY.fullmatch(key):
            return NoMatch("key", rule)
        return Match(rule, key, allowed)
    return NoMatch("no-rule")


def _allowed_query(rule: Rule, query: str | None) -> tuple[str, ...] | None:
    """Canonical allow-listed query pairs, or None when any other parameter is present."""
    if query is None:
        return ()
    if not rule.query:
        return None if query else ()
    pairs = [p for p in query.split("&") if p]
    if any(p.partition("=")[0] not in rule.query for p in pairs):
        return None
    return tuple(sorted(pairs))


def match_writes(rules: RuleSet, raw_target: str) -> tuple[str, ...]:
    """Keys a successful write to this target invalidates (RFC 9111 §4.4)."""
    path = split_target(raw_target)[0].partition("#")[0]  # a fragment never reaches the service
    keys: list[str] = []
    for rule in rules.rules:
        # The raw path with decoded ids, or the whole path decoded (`/patient%73/42`): the
        # service decodes once, then reads the id.
        for candidate, decoded in ((path, False), (unquote(path), True)):
            m = rule.loose.fullmatch(candidate)
            if m is None:
                continue
            params = {name: _as_upstream_reads_it(value, decoded)
                      for name, value in m.groupdict().items()}
            key = rule.key_for(params)
            if (rule.regex.fullmatch(rule.path_for(params)) and SAFE_KEY.fullmatch(key)
                    and all(_SAFE_VALUE.fullmatch(v) for v in params.values())):
                keys.append(key)
            keys.extend(rule.invalidates)
    for write in rules.writes:
        if write.regex.fullmatch(path):
            keys.extend(write.invalidates)
    return tuple(dict.fromkeys(keys))


def _as_upstream_reads_it(raw: str, decoded: bool) -> str:
    """The id a FastAPI `int` path parameter would see: `042`, `%34%32`, `+42` -> `42`.

    A write through an odd spelling must still erase the entity it changed.
    """
    text = (raw if decoded else unquote(raw)).strip()  # str.strip knows Unicode spaces
    m = _INTEGER.fullmatch(text) if len(text) <= 64 else None  # int() of 5,000 digits raises
    return str(int(m.group(1).replace("_", ""))) if m else text
