"""Rules errors say `file:line:column`, refuse repeated keys and list every real problem."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.errors import ConfigError
from sidecar.rules import parse_rules

SOURCE = "routes.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_rules(textwrap.dedent(text).encode(), SOURCE, {})
    return info.value.problems


def test_a_semantic_problem_names_the_line_and_column_of_its_field() -> None:
    found = problems("""\
        version: 1
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
            ttl: -5
    """)
    assert found == [f"{SOURCE}:6:5: rule #1 'patient': ttl must be > 0 seconds, got -5"]


def test_a_key_written_twice_is_refused_where_it_repeats() -> None:
    found = problems("""\
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
            ttl: 10
            ttl: 20
    """)
    assert found == [f"{SOURCE}:6:5: YAML: key 'ttl' is written twice (first at line 5): "
                     "keep one"]


def test_a_bad_path_does_not_also_blame_the_key() -> None:
    found = problems("""\
        rules:
          - name: patient
            path: api/v1/patients/{id}
            key: identity:patient:{id}
    """)
    assert found == [f"{SOURCE}:3:5: rule #1 'patient': path must start with '/', "
                     "got 'api/v1/patients/{id}'"]


def test_a_rule_with_an_error_is_still_checked_against_the_others() -> None:
    found = problems("""\
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
          - name: patient
            path: /api/v2/patients/{pid}
            key: identity:patient:{pid}
            ttl: zero
    """)
    assert f"{SOURCE}:8:5: rule #2 'patient': ttl must be a whole number of seconds, " \
           "got 'zero'" in found
    assert f"{SOURCE}:5:5: rule 'patient': key 'identity:patient:{{pid}}' is already used " \
           "by rule 'patient'" in found
    assert f"{SOURCE}:5:5: rule 'patient': name is used twice" in found
    assert len(found) == 3


@pytest.mark.parametrize("version", ["2", "'1'", "true", "0.9"])
def test_an_unknown_version_is_refused(version: str) -> None:
    found = problems(f"""\
        version: {version}
        rules:
          - name: patient
            path: /api/v1/patients/{{id}}
            key: identity:patient:{{id}}
    """)
    assert len(found) == 1
    assert found[0].startswith(f"{SOURCE}:1:1: version: unknown version ")
    assert "(accepted: 1)" in found[0]


def test_a_yaml_syntax_error_has_a_position_too() -> None:
    (found,) = problems("rules:\n  - name: patient\n    path: [unclosed\n")
    assert found.startswith(f"{SOURCE}:4:1: not valid YAML: ")


def test_an_unknown_field_points_at_itself() -> None:
    found = problems("""\
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
            tll: 600
    """)
    assert found == [f"{SOURCE}:5:5: rule #1 'patient': unknown field 'tll' (allowed: "
                     "audit, invalidates, key, methods, mode, name, params, path, query, "
                     "share, stale, ttl, ttl_env, vary)"]


def test_audit_must_be_a_boolean_and_points_at_itself() -> None:
    found = problems("""\
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
            audit: "yes"
    """)
    assert found == [f"{SOURCE}:5:5: rule #1 'patient': audit must be true or false, "
                     "got 'yes'"]


def test_audit_true_is_read_and_absent_means_off() -> None:
    rules = parse_rules(textwrap.dedent("""\
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
            audit: true
          - name: professional
            path: /api/v1/professionals/{id}
            key: identity:professional:{id}
    """).encode(), SOURCE, {})
    assert [r.audit for r in rules.rules] == [True, False]


def test_share_names_claims_and_the_values_that_qualify() -> None:
    rules = parse_rules(textwrap.dedent("""\
        rules:
          - name: patient
            path: /api/v1/patients/{id}
            key: identity:patient:{id}
            share: {claims: {role: [clinician, admin]}}
    """).encode(), SOURCE, {})
    share = rules.rules[0].share
    assert share is not None and share.claims == (("role", frozenset({"clinician", "admin"})),)
    assert share.marker.startswith("shared.")


@pytest.mark.parametrize("share, problem", [
    ("[clinician]", "7:5: rule #1 'patient': share must be {claims: {<claim>: [<value>, "
                    "...]}}, got ['clinician']"),
    ("{roles: [clinician]}", "7:13: rule #1 'patient': share: unknown field 'roles' "
                             "(allowed: claims)"),
    ("{roles: [clinician]}", "7:5: rule #1 'patient': share must be {claims: {<claim>: "
                             "[<value>, ...]}}: claims must name at least one claim"),
    ("{claims: {}}", "7:13: rule #1 'patient': share must be {claims: {<claim>: [<value>, "
                     "...]}}: claims must name at least one claim"),
    ("{claims: {role: clinician}}", "7:22: rule #1 'patient': share.claims.role must list "
                                    "the values that qualify, got 'clinician'"),
    ("{claims: {role: []}}", "7:22: rule #1 'patient': share.claims.role must list the "
                             "values that qualify, got []"),
])
def test_a_bad_share_is_refused_where_it_is(share: str, problem: str) -> None:
    found = problems(f"""\
        version: 1
        rules:
          - name: patient
            path: /api/v1/patients/{{id}}
            key: identity:patient:{{id}}
            ttl: 10
            share: {share}
    """)
    assert f"{SOURCE}:{problem}" in found
