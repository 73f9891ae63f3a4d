"""Which rule, if any, a request falls under, and the exact key it addresses.

Pure functions over the raw request target: matching happens before any percent-decoding,
so `%34%32`, `42%0A` or `..%2F43` simply do not match and pass through uncached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from sidecar.rules import Rule, RuleSet

# What pydantic's int parsing accepts: ` +4_2.00 ` is 42 to the upstream, at any length.
_INTEGER = re.compile(r"\s*([+-]?)([0-9]+(?:_[0-9]+)*)(?:\.0*)?\s*", re.ASCII)
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


# Targets remembered per rule set (hot entities repeat); short ones only, so hostile
# targets cannot make it large: at most _MEMO_MAX x _MEMO_TARGET_MAX characters.
_MEMO_MAX = 8192
_MEMO_TARGET_MAX = 256


def match_rule(rules: RuleSet, method: str, raw_target: str) -> Match | NoMatch:
    """The rule and key for this request (remembered: matching is pure)."""
    memo = rules.matched
    found = memo.get((method, raw_target))
    if found is not None:
        return found
    result = _match_rule(rules, method, raw_target)
    if len(raw_target) <= _MEMO_TARGET_MAX:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[(method, raw_target)] = result
    return result


def _match_rule(rules: RuleSet, method: str, raw_target: str) -> Match | NoMatch:
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


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """What a write to one target may have changed.

    `keys` are entities (and listed keys) it addresses; `unsure` are the key prefixes of
    rules whose path it hits with an id the sidecar cannot read the way the service would:
    when in doubt, everything under them is erased.
    """

    keys: tuple[str, ...] = ()
    unsure: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keys or self.unsure)


def match_writes(rules: RuleSet, raw_target: str) -> WriteTarget:
    """Keys a successful write to this target invalidates (RFC 9111 §4.4)."""
    path = split_target(raw_target)[0].partition("#")[0]  # a fragment never reaches the service
    # The raw path with decoded ids, or the whole path decoded (`/patient%73/42`,
    # `/api%2Fv1%2Fpatients`): the service decodes once, then routes and reads the id.
    candidates = ((path, False), (unquote(path), True))
    keys: list[str] = []
    unsure: list[str] = []
    for rule in rules.rules:
        for candidate, decoded in candidates:
            m = rule.loose.fullmatch(candidate)
            if m is None:
                continue
            params = {name: as_upstream_reads_it(value, decoded)
                      for name, value in m.groupdict().items()}
            key = rule.key_for(params)
            if (rule.regex.fullmatch(rule.path_for(params)) and SAFE_KEY.fullmatch(key)
                    and all(_SAFE_VALUE.fullmatch(v) for v in params.values())):
                keys.append(key)
            elif not _never_cached(params):
                unsure.append(rule.key_prefix)
            keys.extend(rule.invalidates)
    for write in rules.writes:
        if any(write.regex.fullmatch(candidate) for candidate, _ in candidates):
            keys.extend(write.invalidates)
    return WriteTarget(tuple(dict.fromkeys(keys)), tuple(dict.fromkeys(unsure)))


def _never_cached(params: dict[str, str]) -> bool:
    """Integer ids the rule's pattern refuses (`0`, `-5`, 19+ digits) were never stored;
    anything else the sidecar could not read is a spelling it does not understand.
    """
    return all(_CANONICAL_INT.fullmatch(v) for v in params.values())


_CANONICAL_INT = re.compile(r"-?[1-9][0-9]*|0", re.ASCII)


def as_upstream_reads_it(raw: str, decoded: bool) -> str:
    """The id a FastAPI `int` path parameter would see: `042`, `%34%32`, `+42` -> `42`.

    Any length: pydantic reads `"0" * 5000 + "42"` as 42, so a write through that spelling
    must still erase entity 42. No `int()` here (it refuses 4,300+ digits).
    """
    text = (raw if decoded else unquote(raw)).strip()  # str.strip knows Unicode spaces
    m = _INTEGER.fullmatch(text)
    if m is None:
        return text
    sign, digits = m.groups()
    digits = digits.replace("_", "").lstrip("0") or "0"
    return "-" + digits if sign == "-" and digits != "0" else digits
