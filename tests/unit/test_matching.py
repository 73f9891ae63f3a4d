"""Which requests are cached under which key; anything odd passes through uncached."""

from __future__ import annotations

import dataclasses
import random
import re
import textwrap
from pathlib import Path

import pytest

from sidecar.matching import SAFE_KEY, Match, NoMatch, WriteTarget, match_rule, match_writes
from sidecar.rules import RuleSet, load_rules, parse_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "routes.yaml", {})
DASHBOARD = "identity:stats:dashboard"


def matched(target: str, method: str = "GET", rules: RuleSet = RULES) -> Match:
    result = match_rule(rules, method, target)
    assert isinstance(result, Match), f"{method} {target!r} -> {result}"
    return result


def not_matched(target: str, method: str = "GET", rules: RuleSet = RULES) -> NoMatch:
    result = match_rule(rules, method, target)
    assert isinstance(result, NoMatch), f"{method} {target!r} -> {result}"
    return result


@pytest.mark.parametrize("target, rule, key", [
    ("/api/v1/patients/42", "patient", "identity:patient:42"),
    ("/api/v1/patients/1", "patient", "identity:patient:1"),
    ("/api/v1/patients/999999999999999999", "patient", "identity:patient:999999999999999999"),
    ("/api/v1/professionals/7", "professional", "identity:professional:7"),
    ("/api/v1/statistics/dashboard", "stats-dashboard", DASHBOARD),
])
def test_exact_keys(target: str, rule: str, key: str) -> None:
    for method in ("GET", "HEAD"):
        match = matched(target, method)
        assert (match.rule.name, match.key, match.query) == (rule, key, ())


ODD_IDS = [
    "042", "%34%32", "42%0A", "42%0a", "42\n", "42:x", "*", "\uff14\uff12", "\u0664\u0662",
    "4" * 5000, "4_2", "+42", "-1", "0", " 42", "42 ", "%2042", "42/", "42/../43",
    "42%2F..%2F43", "..%2F43", "4%2E2", "42.0", "1e3", "0x2a", "42;x", "42,43", "",
    "1234567890123456789",  # 19 digits: beyond the 18 the rule allows
]


@pytest.mark.parametrize("odd", ODD_IDS, ids=lambda s: repr(s[:20]))
def test_odd_ids_pass_through_uncached(odd: str) -> None:
    for entity in ("patients", "professionals"):
        not_matched(f"/api/v1/{entity}/{odd}")
        not_matched(f"/api/v1/{entity}/{odd}?")


@pytest.mark.parametrize("target", [
    "/api/v1/patients/./42", "//api/v1/patients/42", "/api/v1//patients/42",
    "/api/v1/patients/../patients/42", "/API/v1/patients/42", "/api/v1/Patients/42",
    "/api/v1/patients", "/api/v1/patients/", "/api/v1/patients/42/history",
    "/api/v2/patients/42", "api/v1/patients/42", "/api/v1/statistics/dashboard/",
    "/api/v1/statistics/dashboard%2F", "/api/v1/statistics/Dashboard", "*", "",
    "http://example.com/api/v1/patients/42",
])
def test_odd_paths_pass_through_uncached(target: str) -> None:
    assert not_matched(target).reason == "no-rule"


def test_property_every_key_is_safe_and_equals_the_raw_segment() -> None:
    """Random ids, biased towards near-misses: a Match always has a clean key."""
    rng = random.Random(20240613)
    pieces = ["0", "1", "4", "9", "42", "/", ":", "%", "%2F", "%3A", ".", "..", " ", "\n",
              "\t", "+", "-", "_", "*", "#", "a", "Z", "\u0664", "\uff14", "\u00e9",
              "\x00", "\\", "=", "&", ";", ","]
    matches = 0
    for i in range(4000):
        if i % 4 == 0:
            segment = str(rng.randrange(1, 10 ** rng.randrange(1, 21)))
        else:
            segment = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))
        entity, prefix = rng.choice([("patient", "patients"), ("professional", "professionals")])
        target = f"/api/v1/{prefix}/{segment}"
        result = match_rule(RULES, "GET", target)
        if isinstance(result, Match):
            matches += 1
            assert SAFE_KEY.fullmatch(result.key), target
            assert result.key.startswith("identity:")
            assert result.key == f"identity:{entity}:{segment}"
            assert re.fullmatch(r"[1-9][0-9]{0,17}", segment), target
        else:
            assert result.reason == "no-rule", (target, result)
    assert matches > 500  # the loop really exercised the Match branch


def test_no_query_and_empty_query_match() -> None:
    assert matched("/api/v1/patients/42").query == ()
    assert matched("/api/v1/patients/42?").query == ()
    assert matched("/api/v1/patients/42?").key == "identity:patient:42"


@pytest.mark.parametrize("query", ["x=1", "_=123", "id=43", "&", "%69d=1", "a"])
def test_query_not_allow_listed_passes_through(query: str) -> None:
    result = not_matched(f"/api/v1/patients/42?{query}")
    assert result.reason == "query"
    assert result.rule is not None and result.rule.name == "patient"


QUERY_RULES = parse_rules(textwrap.dedent("""
    rules:
      - name: patient
        path: /api/v1/patients/{id}
        key: identity:patient:{id}
        query: [fields, lang]
""").encode(), "query.yaml", {})


def test_allow_listed_query_becomes_part_of_the_match_sorted() -> None:
    a = matched("/api/v1/patients/42?lang=fr&fields=name", rules=QUERY_RULES)
    b = matched("/api/v1/patients/42?fields=name&lang=fr", rules=QUERY_RULES)
    assert a.key == b.key == "identity:patient:42"
    assert a.query == b.query == ("fields=name", "lang=fr")
    other = matched("/api/v1/patients/42?lang=en&fields=name", rules=QUERY_RULES)
    assert other.query != a.query
    assert matched("/api/v1/patients/42?", rules=QUERY_RULES).query == ()
    assert matched("/api/v1/patients/42?&lang=fr&", rules=QUERY_RULES).query == ("lang=fr",)


def test_allow_listed_query_with_another_parameter_passes_through() -> None:
    result = not_matched("/api/v1/patients/42?lang=fr&debug=1", rules=QUERY_RULES)
    assert result.reason == "query"
    assert not_matched("/api/v1/patients/42?LANG=fr", rules=QUERY_RULES).reason == "query"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"])
def test_other_methods_on_a_rule_path(method: str) -> None:
    result = not_matched("/api/v1/patients/42", method)
    assert result.reason == "method"
    assert result.rule is not None and result.rule.name == "patient"


def test_parameter_value_with_a_colon_never_becomes_a_key() -> None:
    patient = RULES.rules[0]
    loose = dataclasses.replace(
        patient, regex=re.compile(r"/api/v1/patients/(?P<id>[0-9]{2}:[0-9]{2})", re.ASCII))
    rules = dataclasses.replace(RULES, rules=(loose, *RULES.rules[1:]))
    result = match_rule(rules, "GET", "/api/v1/patients/12:34")
    assert isinstance(result, NoMatch) and result.reason == "key"


# -- writes -------------------------------------------------------------------------------


def _keys(target: str) -> tuple[str, ...]:
    return match_writes(RULES, target).keys


def test_write_to_an_entity_invalidates_it_and_the_dashboard() -> None:
    assert match_writes(RULES, "/api/v1/patients/42") == WriteTarget(
        ("identity:patient:42", DASHBOARD))
    assert _keys("/api/v1/patients/42?notify=1") == ("identity:patient:42", DASHBOARD)
    assert _keys("/api/v1/professionals/7") == ("identity:professional:7", DASHBOARD)


def test_create_invalidates_the_dashboard_only() -> None:
    assert match_writes(RULES, "/api/v1/patients") == WriteTarget((DASHBOARD,))
    assert _keys("/api/v1/professionals") == (DASHBOARD,)


# The service decodes the path once before routing: these are all the collection.
@pytest.mark.parametrize("spelling", ["/api/v1/patient%73", "/api/v1/%70atients",
                                      "/api%2Fv1%2Fpatients", "/api/v1/professional%73"])
def test_encoded_collection_writes_invalidate_the_dashboard(spelling: str) -> None:
    assert _keys(spelling) == (DASHBOARD,)


def test_write_elsewhere_invalidates_nothing() -> None:
    assert not match_writes(RULES, "/api/v1/other/42")
    assert not match_writes(RULES, "/healthz")


# The identity API parses an `int` path parameter like pydantic does (see upstream_stub
# `_INT`): all of these address patient 42, so a write through them must erase it.
@pytest.mark.parametrize("odd", ["042", "+42", "4_2", "%2042", "42%20", "%34%32", "%2B42",
                                 "0" * 70 + "42", "0" * 5000 + "42", "%30" * 100 + "42",
                                 "0_" * 40 + "42"])
def test_write_to_a_non_canonical_id_invalidates_the_entity(odd: str) -> None:
    assert match_writes(RULES, f"/api/v1/patients/{odd}") == WriteTarget(
        ("identity:patient:42", DASHBOARD))


@pytest.mark.parametrize("odd", ["42.0", "42.00", "042.", "%2042.0", "42." + "0" * 70,
                                 "0" * 70 + "42." + "0" * 70])
def test_write_to_a_decimal_spelling_invalidates_the_entity(odd: str) -> None:
    assert "identity:patient:42" in _keys(f"/api/v1/patients/{odd}")


@pytest.mark.parametrize("odd", ["0", "-5", "+0", "4" * 19, "4" * 5000])
def test_write_to_an_id_no_rule_stores_erases_nothing_more(odd: str) -> None:
    assert match_writes(RULES, f"/api/v1/patients/{odd}") == WriteTarget((DASHBOARD,))


@pytest.mark.parametrize("odd", ["42.5", "abc", "42%2F..%2F43", "%00", "٤٢", "4e1"])
def test_write_to_an_unreadable_id_is_unsure_about_the_whole_prefix(odd: str) -> None:
    written = match_writes(RULES, f"/api/v1/patients/{odd}")
    assert written.keys == (DASHBOARD,)
    assert written.unsure == ("identity:patient",)
    assert all(SAFE_KEY.fullmatch(k) for k in written.keys)
