"""Route rules: the shipped file, TTL overrides, and every way a rules file is rejected."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from sidecar.entry import MAX_STORED_SECONDS, Entry
from sidecar.errors import ConfigError
from sidecar.rules import (
    MAX_STALE_SECONDS,
    MAX_TTL_SECONDS,
    RuleSet,
    load_rules,
    parse_rules,
)

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ROOT / "config" / "routes.yaml"
SOURCE = "test-routes.yaml"

# One valid rule; tests replace single lines of it to make it invalid.
PATIENT = """
    rules:
      - name: patient
        methods: [GET]
        path: /api/v1/patients/{id}
        key: identity:patient:{id}
        ttl: 600
        ttl_env: CACHE_TTL_PATIENT
"""


def parse(yaml_text: str, env: Mapping[str, str] | None = None) -> RuleSet:
    return parse_rules(textwrap.dedent(yaml_text).encode(), SOURCE, env or {})


def located(yaml_text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The problems as reported: each starts with `file:line:column: `."""
    with pytest.raises(ConfigError) as info:
        parse(yaml_text, env)
    assert str(info.value) == "\n".join(info.value.problems)
    for problem in info.value.problems:
        assert re.match(rf"{re.escape(SOURCE)}:\d+:\d+: ", problem), problem
    return info.value.problems


def problems(yaml_text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The problems without their line and column, for tests about the wording."""
    return [re.sub(rf"^({re.escape(SOURCE)}):\d+:\d+:", r"\1:", p)
            for p in located(yaml_text, env)]


def assert_rejected(
    yaml_text: str, rule: str | None, fragment: str, env: Mapping[str, str] | None = None
) -> None:
    """Some problem names the file, the rule (quoted, when there is one) and the problem."""
    found = problems(yaml_text, env)
    wanted = [
        p for p in found
        if p.startswith(f"{SOURCE}: ") and fragment in p and (rule is None or f"'{rule}'" in p)
    ]
    assert wanted, f"no problem naming {rule!r} and {fragment!r} in {found}"


def patient(old: str, new: str) -> str:
    assert old in PATIENT
    return PATIENT.replace(old, new)


# -- the shipped file ---------------------------------------------------------------------


def test_shipped_routes_load_with_the_three_seed_rules() -> None:
    rules = load_rules(ROUTES, {})
    assert rules.service == "identity"
    assert rules.source == str(ROUTES)
    summary = [(r.name, r.path, r.key, r.key_prefix, r.ttl, r.ttl_env) for r in rules.rules]
    assert summary == [
        ("patient", "/api/v1/patients/{id}", "identity:patient:{id}", "identity:patient",
         600, "CACHE_TTL_PATIENT"),
        ("professional", "/api/v1/professionals/{id}", "identity:professional:{id}",
         "identity:professional", 600, "CACHE_TTL_PROFESSIONAL"),
        ("stats-dashboard", "/api/v1/statistics/dashboard", "identity:stats:dashboard",
         "identity:stats", 300, "CACHE_TTL_STATS_DASHBOARD"),
    ]
    assert rules.prefixes == ("identity:patient", "identity:professional", "identity:stats")
    for rule in rules.rules:
        assert rule.methods == frozenset({"GET", "HEAD"})
        assert rule.query == frozenset()
    by_name = {r.name: r for r in rules.rules}
    assert by_name["patient"].invalidates == ("identity:stats:dashboard",)
    assert by_name["professional"].invalidates == ("identity:stats:dashboard",)
    assert by_name["patient"].stale.keep == 900
    assert [(w.path, w.invalidates) for w in rules.writes] == [
        ("/api/v1/patients", ("identity:stats:dashboard",)),
        ("/api/v1/professionals", ("identity:stats:dashboard",)),
    ]


def test_digest_identifies_the_file_contents() -> None:
    a, b = parse(PATIENT), parse(PATIENT)
    changed = parse(patient("ttl: 600", "ttl: 601"))
    assert a.digest == b.digest
    assert a.digest != changed.digest
    assert load_rules(ROUTES, {}).digest == load_rules(ROUTES, {}).digest


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_rules(missing, {})
    assert info.value.problems[0].startswith(f"{missing}: cannot read")


# -- TTL overrides from the environment ---------------------------------------------------


def ttls(rules: RuleSet) -> dict[str, int]:
    return {r.name: r.ttl for r in rules.rules}


def test_env_override_changes_only_its_own_rule() -> None:
    assert ttls(load_rules(ROUTES, {"CACHE_TTL_PATIENT": "60"})) == {
        "patient": 60, "professional": 600, "stats-dashboard": 300,
    }
    assert ttls(load_rules(ROUTES, {"CACHE_TTL_STATS_DASHBOARD": " 30 "})) == {
        "patient": 600, "professional": 600, "stats-dashboard": 30,
    }


def test_blank_env_override_keeps_the_file_ttl() -> None:
    assert ttls(load_rules(ROUTES, {"CACHE_TTL_PATIENT": "  "}))["patient"] == 600


def test_default_ttl_env_does_not_override_a_rule_with_its_own_ttl() -> None:
    assert ttls(load_rules(ROUTES, {"CACHE_TTL_DEFAULT": "5"})) == {
        "patient": 600, "professional": 600, "stats-dashboard": 300,
    }


def test_default_ttl_applies_to_a_rule_without_its_own() -> None:
    text = """
        defaults:
          ttl: 120
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
          - name: professional
            path: /api/v1/professionals/{id}
            key: identity:professional:{id}
            ttl: 45
    """
    assert ttls(parse(text)) == {"patient": 120, "professional": 45}
    assert ttls(parse(text, {"CACHE_TTL_DEFAULT": "42"})) == {"patient": 42, "professional": 45}
    assert parse(text).rules[0].ttl_env == "CACHE_TTL_DEFAULT"


def test_default_ttl_is_300_seconds_without_defaults() -> None:
    rules = parse(patient("        ttl: 600\n        ttl_env: CACHE_TTL_PATIENT\n", ""))
    assert ttls(rules) == {"patient": 300}


# -- rejections: each names the file, the rule and the problem ----------------------------


def test_unknown_field() -> None:
    assert_rejected(patient("ttl: 600", "tll: 600"), "patient", "unknown field 'tll'")


def test_unknown_top_level_field() -> None:
    assert_rejected("servce: identity\n" + textwrap.dedent(PATIENT), None,
                    "unknown field 'servce'")


def test_bad_regex() -> None:
    text = patient("path: /api/v1/patients/{id}\n",
                   "path: /api/v1/patients/{id}\n        params: {id: '[0-9'}\n")
    assert_rejected(text, "patient", "params.id: bad pattern '[0-9'")


@pytest.mark.parametrize("pattern, probe", [
    ("'[0-9/]+'", "/"),
    ("'[0-9:]+'", ":"),
    ("'[0-9]*'", ""),
    ("'[0-9.]+'", "."),
    ("'.+'", "/"),
    ("'[^/]+'", ":"),
    ("'[0-9%A-F]+'", "%"),
])
def test_param_pattern_that_escapes_the_segment_or_key(pattern: str, probe: str) -> None:
    text = patient("path: /api/v1/patients/{id}\n",
                   f"path: /api/v1/patients/{{id}}\n        params: {{id: {pattern}}}\n")
    assert_rejected(text, "patient", f"matches {probe!r}")


def test_capturing_group_in_param_pattern() -> None:
    text = patient("path: /api/v1/patients/{id}\n",
                   "path: /api/v1/patients/{id}\n        params: {id: '([0-9]+)'}\n")
    assert_rejected(text, "patient", "use (?:...) instead of capturing groups")


def test_param_pattern_matching_an_id_with_a_colon_inside() -> None:
    text = patient("path: /api/v1/patients/{id}\n",
                   "path: /api/v1/patients/{id}\n        params: {id: '[0-9]{2}:[0-9]{2}'}\n")
    assert_rejected(text, "patient", "':'")


def test_two_rules_with_the_same_key_template() -> None:
    text = PATIENT + """
      - name: patient-v2
        path: /api/v2/patients/{id}
        key: identity:patient:{id}
    """
    assert_rejected(text, "patient-v2", "key 'identity:patient:{id}' is already used by "
                                        "rule 'patient'")


def test_two_rules_with_the_same_key_template_under_another_placeholder_name() -> None:
    text = PATIENT + """
      - name: patient-v2
        path: /api/v2/patients/{pid}
        key: identity:patient:{pid}
    """
    assert_rejected(text, "patient-v2", "already used by rule 'patient'")


def test_two_rules_with_the_same_name() -> None:
    text = PATIENT + """
      - name: patient
        path: /api/v1/professionals/{id}
        key: identity:professional:{id}
    """
    assert_rejected(text, "patient", "name is used twice")


@pytest.mark.parametrize("ttl, fragment", [
    ("0", "ttl must be > 0 seconds, got 0"),
    ("-5", "ttl must be > 0 seconds, got -5"),
    ("1.5", "ttl must be a whole number of seconds, got 1.5"),
    ("'60s'", "ttl must be a whole number of seconds, got '60s'"),
    ("true", "ttl must be a whole number of seconds, got True"),
    ("2000000000", "ttl must be 1 to 31536000 seconds (365 days), got 2000000000"),
    ("31536001", "ttl must be 1 to 31536000 seconds (365 days), got 31536001"),
])
def test_bad_ttl(ttl: str, fragment: str) -> None:
    assert_rejected(patient("ttl: 600", f"ttl: {ttl}"), "patient", fragment)


@pytest.mark.parametrize("value, fragment", [
    ("abc", "environment CACHE_TTL_PATIENT='abc' is not a whole number"),
    ("1.5", "environment CACHE_TTL_PATIENT='1.5' is not a whole number"),
    ("0", "environment CACHE_TTL_PATIENT='0' must be > 0 seconds"),
    ("-60", "environment CACHE_TTL_PATIENT='-60' must be > 0 seconds"),
    ("2000000000", "environment CACHE_TTL_PATIENT='2000000000' is too long: a ttl must be "
                   "1 to 31536000 seconds (365 days)"),
])
def test_bad_env_override(value: str, fragment: str) -> None:
    assert_rejected(PATIENT, "patient", fragment, {"CACHE_TTL_PATIENT": value})
    assert_rejected(str(ROUTES.read_text()), "patient", fragment, {"CACHE_TTL_PATIENT": value})


def test_a_year_is_the_longest_ttl_and_stale_window() -> None:
    text = patient("ttl: 600", f"ttl: {MAX_TTL_SECONDS}") + (
        f"        stale: {{while_revalidate: {MAX_STALE_SECONDS}, if_error: 60}}\n")
    rule = parse(text).rules[0]
    assert rule.ttl == MAX_TTL_SECONDS == 31_536_000
    assert rule.stale.keep == MAX_STALE_SECONDS
    assert ttls(parse(PATIENT, {"CACHE_TTL_PATIENT": str(MAX_TTL_SECONDS)})) == {
        "patient": MAX_TTL_SECONDS}


def test_longest_accepted_entry_still_decodes() -> None:
    """What a rule may store, the reader must accept (else: stored, then always corrupt)."""
    assert MAX_TTL_SECONDS + MAX_STALE_SECONDS < MAX_STORED_SECONDS
    entry = Entry(status=200, headers=(), body=b"{}", stored_at=1.0, ttl=MAX_TTL_SECONDS,
                  initial_age=MAX_TTL_SECONDS - 1)
    assert Entry.decode(entry.encode()) == entry


def test_default_ttl_beyond_a_year_is_rejected() -> None:
    text = "defaults:\n  ttl: 2000000000\n" + textwrap.dedent(
        patient("        ttl: 600\n        ttl_env: CACHE_TTL_PATIENT\n", ""))
    assert problems(text) == [
        f"{SOURCE}: defaults: ttl must be 1 to 31536000 seconds (365 days), got 2000000000"]
    assert_rejected(PATIENT, None, "CACHE_TTL_DEFAULT='2000000000' is too long",
                    {"CACHE_TTL_DEFAULT": "2000000000"})


@pytest.mark.parametrize("window", ["while_revalidate", "if_error", "max"])
def test_stale_window_beyond_a_year_is_rejected(window: str) -> None:
    text = PATIENT + f"        stale: {{{window}: 2000000000}}\n"
    assert_rejected(text, "patient",
                    f"stale.{window} must be 0 to 31536000 seconds (365 days), got 2000000000")


def test_bad_default_env_override_is_reported() -> None:
    found = problems(PATIENT, {"CACHE_TTL_DEFAULT": "ten"})
    assert found == [f"{SOURCE}: defaults: environment CACHE_TTL_DEFAULT='ten' "
                     "is not a whole number"]


def test_ttl_env_must_be_a_variable_name() -> None:
    assert_rejected(patient("ttl_env: CACHE_TTL_PATIENT", "ttl_env: cache-ttl"), "patient",
                    "ttl_env must be an UPPER_CASE variable name")


def test_key_that_omits_a_path_parameter() -> None:
    # Every patient would share one entry.
    assert_rejected(patient("key: identity:patient:{id}", "key: identity:patient:all"),
                    "patient", "must use exactly the path parameters ['id'], it uses []")


def test_key_that_uses_a_parameter_the_path_lacks() -> None:
    text = patient("key: identity:patient:{id}", "key: identity:patient:{id}-{v}")
    assert_rejected(text, "patient", "must use exactly the path parameters ['id'], "
                                     "it uses ['id', 'v']")


def test_param_pattern_for_a_parameter_not_in_the_path() -> None:
    text = patient("path: /api/v1/patients/{id}\n",
                   "path: /api/v1/patients/{id}\n        params: {pid: '[0-9]+'}\n")
    assert_rejected(text, "patient", "params.pid does not appear in path")


@pytest.mark.parametrize("key", ["other:patient:{id}", "patient:{id}", "Identity:patient:{id}"])
def test_key_not_starting_with_the_service(key: str) -> None:
    assert_rejected(patient("key: identity:patient:{id}", f"key: '{key}'"), "patient",
                    "must look like 'identity:<entity>:<identifier>'")


def test_key_with_characters_outside_the_key_alphabet() -> None:
    assert_rejected(patient("key: identity:patient:{id}", "key: 'identity:Patient:{id}'"),
                    "patient", "segment 'Patient' must be lowercase")


@pytest.mark.parametrize("methods", ["[POST]", "[GET, PUT]", "[get]", "[]", "GET"])
def test_methods_other_than_get(methods: str) -> None:
    assert_rejected(patient("methods: [GET]", f"methods: {methods}"), "patient",
                    "methods must list GET")


def test_head_is_allowed_and_implied() -> None:
    rules = parse(patient("methods: [GET]", "methods: [GET, HEAD]"))
    assert rules.rules[0].methods == frozenset({"GET", "HEAD"})


def test_invalid_yaml() -> None:
    found = problems("rules:\n  - name: patient\n    path: [unclosed\n")
    assert len(found) == 1
    assert found[0].startswith(f"{SOURCE}: not valid YAML")


@pytest.mark.parametrize("text", ["service: identity\n", "rules: []\n", "rules: patient\n"])
def test_missing_rules(text: str) -> None:
    assert_rejected(text, None, "rules: must be a non-empty list")


@pytest.mark.parametrize("text", ["", "- patient\n", "just text\n"])
def test_top_level_not_a_mapping(text: str) -> None:
    assert_rejected(text, None, "top level must be a mapping with 'rules'")


def test_rule_that_is_not_a_mapping() -> None:
    assert_rejected("rules:\n  - patient\n", None, "rule #1: must be a mapping")


def test_path_must_start_with_a_slash() -> None:
    assert_rejected(patient("path: /api/v1/patients/{id}", "path: api/v1/patients/{id}"),
                    "patient", "path must start with '/'")


def test_invalidates_must_be_exact_keys() -> None:
    text = patient("ttl: 600", "ttl: 600\n        invalidates: ['identity:stats:*']")
    assert_rejected(text, "patient", "must be an exact key")


def test_every_problem_is_reported_at_once() -> None:
    text = """
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:all
            ttl: 0
          - name: professional
            methods: [POST]
            path: /api/v1/professionals/{id}
            key: identity:professional:{id}
    """
    found = problems(text)
    assert any("'patient'" in p and "path parameters" in p for p in found)
    assert any("'patient'" in p and "ttl must be > 0" in p for p in found)
    assert any("'professional'" in p and "methods must list GET" in p for p in found)


def test_mode_is_ttl_by_default_and_rfc9111_on_request() -> None:
    assert {r.mode for r in parse(PATIENT).rules} == {"ttl"}
    rule = parse(patient("ttl: 600", "ttl: 600\n        mode: rfc9111")).rules[0]
    assert rule.honours_origin and rule.mode == "rfc9111"
    assert_rejected(patient("ttl: 600", "ttl: 600\n        mode: http"), "patient",
                    "mode must be one of ttl, rfc9111, got 'http'")


def test_vary_lists_request_headers_and_refuses_what_the_variant_covers() -> None:
    rule = parse(patient("ttl: 600", "ttl: 600\n        vary: [Accept-Language, X-Tenant]")
                 ).rules[0]
    assert rule.vary == ("accept-language", "x-tenant")
    for bad in ("[Authorization]", "[Connection]", "[Accept-Encoding]", '["bad name"]', "yes"):
        assert_rejected(patient("ttl: 600", f"ttl: 600\n        vary: {bad}"), "patient",
                        "vary must list request header names")
