"""Route rules: load `config/routes.yaml`, validate all of it, resolve TTL overrides.

A rule is compiled once here so that matching a request is a single anchored regex on
the raw path. Validation is strict because a loose rule can put one patient's data under
another's key: every path parameter must appear in the key and vice versa.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sidecar.errors import ConfigError
from sidecar.headers import TOKEN
from sidecar.yaml_marks import Position, load, position_of

if TYPE_CHECKING:  # matching imports this module; its result types are only named here
    from sidecar.matching import Match, NoMatch

DEFAULT_PARAM_PATTERN = "[1-9][0-9]{0,17}"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEY_LITERAL = re.compile(r"[a-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_PATH_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
# Strings a parameter pattern must never match: they would escape the path segment or
# the key namespace.
_FORBIDDEN_PROBES = ("", "/", ":", "%", ".", "..", "*", "?", "#", " ", "a/b", "1:2", "%2F",
                     "12:34", "ab:cd", "1.2", "1 2")
_TOP_FIELDS = {"version", "service", "defaults", "rules", "writes"}
VERSIONS = (1,)  # `version:` values this sidecar reads; absent means 1
_DEFAULT_FIELDS = {"ttl", "ttl_env", "stale"}
_RULE_FIELDS = {
    "name", "methods", "path", "params", "key", "ttl", "ttl_env", "query", "invalidates",
    "stale", "mode", "vary", "audit", "share",
}
# Request headers a rule may key on when the service sends `Vary` on them. Never these:
# hop-by-hop, the per-answer ones, and what the variant already covers another way.
_NOT_VARIED = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding",
                         "upgrade", "host", "content-length", "authorization", "cookie",
                         "accept-encoding"})
# `ttl`: the rule's TTL is the policy. `rfc9111`: the origin's Cache-Control/Expires are,
# with the TTL as an upper bound (see sidecar/freshness.py and docs/caching.md).
TTL_MODE, RFC9111_MODE = "ttl", "rfc9111"
MODES = (TTL_MODE, RFC9111_MODE)
_SHARE_FIELDS = {"claims"}
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII)
_STALE_FIELDS = {"while_revalidate", "if_error", "max"}
# A TTL, and each stale window, is at most a year: an entity's Redis expiry (TTL + largest
# window) then stays under two years, far inside what EXPIRE and `entry.Entry` accept.
MAX_TTL_SECONDS = 365 * 24 * 3600
MAX_STALE_SECONDS = MAX_TTL_SECONDS
_TTL_RANGE = f"1 to {MAX_TTL_SECONDS} seconds (365 days)"
_WRITE_FIELDS = {"path", "params", "invalidates"}


@dataclass(frozen=True, slots=True)
class Stale:
    """RFC 5861 windows in seconds; `max` bounds both."""

    while_revalidate: int = 0
    if_error: int = 0
    max: int = 0

    @property
    def keep(self) -> int:
        """How long past its TTL an entry is worth keeping in the store."""
        return min(max(self.while_revalidate, self.if_error), self.max)


@dataclass(frozen=True, slots=True)
class Share:
    """`share: {claims: {role: [clinician, admin]}}`: a verified caller whose every named
    claim holds one of its values (a list claim: any of them) uses the one shared variant."""

    claims: tuple[tuple[str, frozenset[str]], ...]
    # The variant's credential part for qualifying callers (computed once, it is on the hit
    # path): never a fingerprint (hex) nor `anon`, and another policy (a reload that widens
    # it) gets another marker.
    marker: str = ""

    @staticmethod
    def of(claims: tuple[tuple[str, frozenset[str]], ...]) -> Share:
        text = ";".join(f"{n}={','.join(sorted(v))}" for n, v in claims)
        return Share(claims, "shared." + hashlib.sha256(text.encode()).hexdigest()[:12])


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    methods: frozenset[str]
    path: str
    regex: re.Pattern[str]
    loose: re.Pattern[str]  # same skeleton, any segment: to find what a write addresses
    key: str
    key_prefix: str
    ttl: int
    ttl_env: str | None
    query: frozenset[str]
    invalidates: tuple[str, ...]
    stale: Stale
    mode: str = TTL_MODE
    vary: tuple[str, ...] = ()  # request headers in the variant (lower case, sorted)
    audit: bool = False  # every answer from the cache writes an audit line (audit.py)
    share: Share | None = None  # verified callers with these claims share one variant

    @property
    def honours_origin(self) -> bool:
        return self.mode == RFC9111_MODE

    def key_for(self, params: Mapping[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: params[m.group(1)], self.key)

    def path_for(self, params: Mapping[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: params[m.group(1)], self.path)


@dataclass(frozen=True, slots=True)
class WriteRule:
    """A write path outside any cached rule whose success invalidates some keys."""

    path: str
    regex: re.Pattern[str]
    invalidates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    service: str
    rules: tuple[Rule, ...]
    writes: tuple[WriteRule, ...]
    source: str
    digest: str
    # (method, raw target) -> what matching.match_rule found: a pure function of this rule
    # set, so a reload (a new RuleSet) starts empty. Bounded there.
    matched: dict[tuple[str, str], Match | NoMatch] = field(default_factory=dict,
                                                             compare=False, repr=False)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(sorted({r.key_prefix for r in self.rules}))


def load_rules(path: Path | str, env: Mapping[str, str] | None = None) -> RuleSet:
    """Read and validate a rules file; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_rules(raw, str(path), env)


def parse_rules(raw: bytes, source: str, env: Mapping[str, str]) -> RuleSet:
    try:
        doc, duplicates = load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1:1"
        text = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError([f"{source}:{where}: not valid YAML: {text}"]) from None
    parser = _Parser(source, env)
    for at, problem in duplicates:
        parser.fail("YAML", problem, at)
    return parser.parse(doc, hashlib.sha256(raw).hexdigest()[:16])


class _Parser:
    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[str] = []
        self.here: Position = (1, 1)  # the item being read: where a problem without a field is
        # (name, key shape, position) of every rule whose name and key are themselves valid,
        # so a rule with other errors is still checked against the others
        self.identities: list[tuple[str, str, Position]] = []  # name, key, where

    def fail(self, where: str, problem: str, at: Position | None = None) -> None:
        line, column = at or self.here
        self.problems.append(f"{self.source}:{line}:{column}: {where}: {problem}")

    def at(self, item: Any, field: Any = None) -> Position:
        return position_of(item, field) or self.here

    def parse(self, doc: Any, digest: str) -> RuleSet:
        if not isinstance(doc, dict):
            line, column = position_of(doc) or (1, 1)
            raise ConfigError([*self.problems, f"{self.source}:{line}:{column}: top level "
                                                "must be a mapping with 'rules'"])
        self.here = self.at(doc)
        self.unknown("top level", doc, _TOP_FIELDS)
        version = doc.get("version", 1)
        if isinstance(version, bool) or version not in VERSIONS:
            self.fail("version", f"unknown version {version!r} (accepted: "
                                 f"{', '.join(map(str, VERSIONS))}); this sidecar would "
                                 "misread it", self.at(doc, "version"))
        service = doc.get("service", "identity")
        if not isinstance(service, str) or not _KEY_LITERAL.fullmatch(service):
            self.fail("service", f"must be lowercase letters, digits, '-' or '_', got {service!r}",
                      self.at(doc, "service"))
            service = "identity"
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, dict):
            self.fail("defaults", "must be a mapping", self.at(doc, "defaults"))
            defaults = {}
        self.here = self.at(doc, "defaults")
        self.unknown("defaults", defaults, _DEFAULT_FIELDS)
        default_ttl = self.ttl("defaults", defaults, defaults.get("ttl", 300),
                               defaults.get("ttl_env", "CACHE_TTL_DEFAULT"))
        default_stale = self.stale("defaults", defaults, Stale())
        raw_rules = doc.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            self.fail("rules", "must be a non-empty list", self.at(doc, "rules"))
            raw_rules = []
        rules: list[Rule] = []
        for index, item in enumerate(raw_rules, 1):
            self.here = self.at(raw_rules, index - 1)
            rule = self.rule(index, item, service, default_ttl, default_stale)
            if rule is not None:
                rules.append(rule)
        self.unique()
        raw_writes = doc.get("writes") or []
        if not isinstance(raw_writes, list):
            self.fail("writes", "must be a list of {path, invalidates}", self.at(doc, "writes"))
            raw_writes = []
        writes: list[WriteRule] = []
        for i, item in enumerate(raw_writes, 1):
            self.here = self.at(raw_writes, i - 1)
            if (w := self.write(i, item, service)) is not None:
                writes.append(w)
        if self.problems:
            raise ConfigError(self.problems)
        return RuleSet(service, tuple(rules), tuple(writes), self.source, digest)

    def unknown(self, where: str, item: dict[str, Any], allowed: set[str]) -> None:
        for name in sorted(set(item) - allowed, key=str):
            self.fail(where, f"unknown field {name!r} (allowed: {', '.join(sorted(allowed))})",
                      self.at(item, name))

    def ttl(self, where: str, item: Any, value: Any, env_name: Any) -> tuple[int, str | None]:
        env_at, ttl_at = self.at(item, "ttl_env"), self.at(item, "ttl")
        if env_name is not None and not (
            isinstance(env_name, str) and _ENV_NAME.fullmatch(env_name)
        ):
            self.fail(where, f"ttl_env must be an UPPER_CASE variable name, got {env_name!r}",
                      env_at)
            env_name = None
        raw_env = self.env.get(env_name, "").strip() if env_name else ""
        if raw_env:
            try:
                value = int(raw_env)
            except ValueError:
                self.fail(where, f"environment {env_name}={raw_env!r} is not a whole number",
                          env_at)
                return 1, env_name
            if value <= 0:
                self.fail(where, f"environment {env_name}={raw_env!r} must be > 0 seconds",
                          env_at)
            elif value > MAX_TTL_SECONDS:
                self.fail(where, f"environment {env_name}={raw_env!r} is too long: a ttl "
                                 f"must be {_TTL_RANGE}", env_at)
            return value, env_name
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"ttl must be a whole number of seconds, got {value!r}", ttl_at)
            return 1, env_name
        if value <= 0:
            self.fail(where, f"ttl must be > 0 seconds, got {value}", ttl_at)
        elif value > MAX_TTL_SECONDS:
            self.fail(where, f"ttl must be {_TTL_RANGE}, got {value}", ttl_at)
        return value, env_name

    def stale(self, where: str, item: Any, default: Stale) -> Stale:
        value = item.get("stale") if isinstance(item, dict) else None
        if value is None:
            return default
        if not isinstance(value, dict):
            self.fail(where, "stale must be a mapping with while_revalidate, if_error, max",
                      self.at(item, "stale"))
            return default
        self.unknown(f"{where}: stale", value, _STALE_FIELDS)
        numbers: dict[str, int] = {}
        for name in sorted(_STALE_FIELDS):
            n = value.get(name, getattr(default, name))
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                self.fail(where, f"stale.{name} must be a whole number >= 0, got {n!r}",
                          self.at(value, name))
                n = 0
            elif n > MAX_STALE_SECONDS:
                self.fail(where, f"stale.{name} must be 0 to {MAX_STALE_SECONDS} seconds "
                                 f"(365 days), got {n}", self.at(value, name))
                n = 0
            numbers[name] = n
        if "max" not in value:
            numbers["max"] = max(numbers["while_revalidate"], numbers["if_error"])
        return Stale(**numbers)

    def template(self, where: str, item: Any) -> tuple[re.Pattern[str], set[str]] | None:
        """Compile a path template to an anchored regex over the raw (encoded) path."""
        path, params, path_at = item.get("path"), item.get("params"), self.at(item, "path")
        if not isinstance(path, str) or not path.startswith("/"):
            self.fail(where, f"path must start with '/', got {path!r}", path_at)
            return None
        params = params or {}
        if not isinstance(params, dict):
            self.fail(where, "params must map parameter names to regex patterns",
                      self.at(item, "params"))
            return None
        names: list[str] = _PLACEHOLDER.findall(path)
        for extra in sorted(set(params) - set(names), key=str):
            self.fail(where, f"params.{extra} does not appear in path {path!r}",
                      self.at(params, extra))
        pieces, last = [], 0
        for m in _PLACEHOLDER.finditer(path):
            literal = path[last:m.start()]
            if not _PATH_LITERAL.fullmatch(literal):
                self.fail(where, f"path {path!r} has characters that need percent-encoding",
                          path_at)
            pieces.append(re.escape(literal))
            pattern = params.get(m.group(1), DEFAULT_PARAM_PATTERN)
            self.here, outer = self.at(params, m.group(1)), self.here
            ok = self.param_pattern(where, m.group(1), pattern)
            self.here = outer
            if not ok:
                return None
            pieces.append(f"(?P<{m.group(1)}>{pattern})")
            last = m.end()
        tail = path[last:]
        if not _PATH_LITERAL.fullmatch(tail) or "{" in tail or "}" in tail:
            self.fail(where, f"path {path!r} has an unbalanced or invalid placeholder", path_at)
            return None
        pieces.append(re.escape(tail))
        if len(set(names)) != len(names):
            self.fail(where, f"path {path!r} repeats a parameter", path_at)
            return None
        return re.compile("".join(pieces), re.ASCII), set(names)

    @staticmethod
    def loose(path: str) -> re.Pattern[str]:
        pieces, last = [], 0
        for m in _PLACEHOLDER.finditer(path):
            pieces.append(re.escape(path[last:m.start()]))
            pieces.append(f"(?P<{m.group(1)}>[^/]+)")
            last = m.end()
        pieces.append(re.escape(path[last:]))
        return re.compile("".join(pieces), re.ASCII)

    def param_pattern(self, where: str, name: str, pattern: Any) -> bool:
        if not isinstance(pattern, str):
            self.fail(where, f"params.{name} must be a regex string")
            return False
        try:
            compiled = re.compile(pattern, re.ASCII)
        except re.error as exc:
            self.fail(where, f"params.{name}: bad pattern {pattern!r}: {exc}")
            return False
        if compiled.groups:
            self.fail(where, f"params.{name}: use (?:...) instead of capturing groups")
            return False
        bad = [p for p in _FORBIDDEN_PROBES if compiled.fullmatch(p)]
        if bad:
            self.fail(where, f"params.{name}: pattern {pattern!r} matches {bad[0]!r}; "
                             "ids must be non-empty and free of '/', ':', '%' and dots")
            return False
        return True

    def key_template(
        self, where: str, item: Any, service: str, names: set[str] | None
    ) -> str | None:
        """The key template; `names` None when the path failed (no comparison then)."""
        key, outer = item.get("key"), self.here
        self.here = self.at(item, "key")
        try:
            return self._key_template(where, key, service, names)
        finally:
            self.here = outer

    def _key_template(
        self, where: str, key: Any, service: str, names: set[str] | None
    ) -> str | None:
        if not isinstance(key, str):
            self.fail(where, f"key must be a string like '{service}:patient:{{id}}'")
            return None
        parts = key.split(":")
        if len(parts) < 3 or parts[0] != service:
            self.fail(where, f"key {key!r} must look like '{service}:<entity>:<identifier>'")
            return None
        for part in parts:
            literal = _PLACEHOLDER.sub("", part)
            if (not literal and not _PLACEHOLDER.fullmatch(part)) or (
                literal and not _KEY_LITERAL.fullmatch(literal)
            ):
                self.fail(where, f"key {key!r}: segment {part!r} must be lowercase "
                                 "letters, digits, '-', '_' or one {placeholder}")
                return None
        used = set(_PLACEHOLDER.findall(key))
        if names is not None and used != names:
            self.fail(where, f"key {key!r} must use exactly the path parameters "
                             f"{sorted(names)}, it uses {sorted(used)}")
            return None
        return key

    def rule(
        self, index: int, item: Any, service: str,
        default_ttl: tuple[int, str | None], default_stale: Stale,
    ) -> Rule | None:
        name = item.get("name") if isinstance(item, dict) else None
        where = f"rule #{index}" + (f" {name!r}" if isinstance(name, str) else "")
        if not isinstance(item, dict):
            self.fail(where, "must be a mapping")
            return None
        count = len(self.problems)
        self.unknown(where, item, _RULE_FIELDS)
        name_ok = isinstance(name, str) and bool(_KEY_LITERAL.fullmatch(name))
        if not name_ok:
            self.fail(where, "name must be lowercase letters, digits, '-' or '_'",
                      self.at(item, "name"))
        methods = item.get("methods", ["GET"])
        if not isinstance(methods, list) or not methods or any(
            m not in ("GET", "HEAD") for m in methods
        ):
            self.fail(where, f"methods must list GET (HEAD is implied), got {methods!r}",
                      self.at(item, "methods"))
        compiled = self.template(where, item)
        path_failed = len(self.problems) > count and compiled is None
        key = self.key_template(where, item, service, None if path_failed else (
            compiled[1] if compiled else set()))
        if name_ok and key is not None:
            self.identities.append((str(name), key, self.here))
        if "ttl" in item or "ttl_env" in item:
            ttl, ttl_env = self.ttl(where, item, item.get("ttl", default_ttl[0]),
                                    item.get("ttl_env"))
        else:
            ttl, ttl_env = default_ttl
        query = item.get("query") or []
        if not isinstance(query, list) or not all(
            isinstance(q, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", q) for q in query
        ):
            self.fail(where, f"query must list parameter names, got {query!r}",
                      self.at(item, "query"))
            query = []
        invalidates = self.invalidates(where, item, service)
        stale = self.stale(where, item, default_stale)
        mode = item.get("mode", TTL_MODE)
        if mode not in MODES:
            self.fail(where, f"mode must be one of {', '.join(MODES)}, got {mode!r}",
                      self.at(item, "mode"))
        vary = item.get("vary") or []
        if not isinstance(vary, list) or not all(
                isinstance(v, str) and TOKEN.fullmatch(v)
                and v.lower() not in _NOT_VARIED for v in vary):
            self.fail(where, "vary must list request header names the variant may key on "
                             f"(not {', '.join(sorted(_NOT_VARIED))}), got {vary!r}",
                      self.at(item, "vary"))
            vary = []
        audit = item.get("audit", False)
        if not isinstance(audit, bool):
            self.fail(where, f"audit must be true or false, got {audit!r}",
                      self.at(item, "audit"))
        share = self.share(where, item)
        if len(self.problems) > count or compiled is None or key is None:
            return None
        return Rule(
            name=str(name), methods=frozenset({"GET", "HEAD"}), path=item["path"],
            regex=compiled[0], loose=self.loose(item["path"]), key=key,
            key_prefix=key.rsplit(":", 1)[0], ttl=ttl,
            ttl_env=ttl_env, query=frozenset(query), invalidates=invalidates, stale=stale,
            mode=mode, vary=tuple(sorted({str(v).lower() for v in vary})),
            audit=audit is True, share=share,
        )

    def share(self, where: str, item: Any) -> Share | None:
        value = item.get("share")
        if value is None:
            return None
        accepted = "share must be {claims: {<claim>: [<value>, ...]}}"
        if not isinstance(value, dict):
            self.fail(where, f"{accepted}, got {value!r}", self.at(item, "share"))
            return None
        self.unknown(f"{where}: share", value, _SHARE_FIELDS)
        claims = value.get("claims")
        if not isinstance(claims, dict) or not claims:
            self.fail(where, f"{accepted}: claims must name at least one claim",
                      self.at(value, "claims") if "claims" in value else self.at(item, "share"))
            return None
        parsed: list[tuple[str, frozenset[str]]] = []
        for name, values in claims.items():
            if not isinstance(name, str) or not _CLAIM_NAME.fullmatch(name):
                self.fail(where, f"share.claims: {name!r} is not a claim name (letters, "
                                 "digits, '_', '.', ':', '-')", self.at(claims, name))
                continue
            if (not isinstance(values, list) or not values
                    or not all(isinstance(v, str) and v for v in values)):
                self.fail(where, f"share.claims.{name} must list the values that qualify, "
                                 f"got {values!r}", self.at(claims, name))
                continue
            parsed.append((name, frozenset(values)))
        return Share.of(tuple(sorted(parsed, key=lambda c: c[0])))

    def invalidates(self, where: str, item: Any, service: str) -> tuple[str, ...]:
        value = item.get("invalidates")
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(where, "invalidates must be a list of exact keys",
                      self.at(item, "invalidates"))
            return ()
        for i, key in enumerate(value):
            parts = key.split(":")
            if len(parts) < 3 or parts[0] != service or not all(
                _KEY_LITERAL.fullmatch(p) for p in parts
            ):
                self.fail(where, f"invalidates: {key!r} must be an exact key "
                                 f"'{service}:<entity>:<identifier>' (no placeholders or globs)",
                          self.at(value, i))
        return tuple(value)

    def write(self, index: int, item: Any, service: str) -> WriteRule | None:
        where = f"writes #{index}"
        if not isinstance(item, dict):
            self.fail(where, "must be a mapping with path and invalidates")
            return None
        self.unknown(where, item, _WRITE_FIELDS)
        compiled = self.template(where, item)
        invalidates = self.invalidates(where, item, service)
        if compiled is None or not invalidates:
            if compiled is not None and "invalidates" not in item:
                self.fail(where, "invalidates must name at least one key")
            elif compiled is not None and item.get("invalidates") == []:
                self.fail(where, "invalidates must name at least one key",
                          self.at(item, "invalidates"))
            return None
        return WriteRule(item["path"], compiled[0], invalidates)

    def unique(self) -> None:
        """Names and key shapes, over every rule whose name and key are valid."""
        seen_keys: dict[str, str] = {}
        seen_names: set[str] = set()
        for name, key, at in self.identities:
            shape = _PLACEHOLDER.sub("{}", key)  # {id} and {pid} address the same keys
            if shape in seen_keys:
                self.fail(f"rule {name!r}",
                          f"key {key!r} is already used by rule {seen_keys[shape]!r}", at)
            seen_keys.setdefault(shape, name)
            if name in seen_names:
                self.fail(f"rule {name!r}", "name is used twice", at)
            seen_names.add(name)
