"""The Grafana dashboard's and the alert rules' PromQL refer only to real sidecar metrics.

The reference is the sidecar's own exposition: `sidecar.metrics.Metrics()` with one sample
recorded in every family, rendered by `prometheus_client.generate_latest` exactly as the
admin port's /metrics does, so `_bucket`, `_count` and `_total` series all appear.
Where promtool is on PATH (Debian: apt-get install prometheus) the alert rules' own unit
tests (deploy/prometheus/alerts.test.yaml) run too, and every expression is parsed by it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "identity-cache-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
DOCS = ROOT / "docs"
# The dashboard's variables, in every selector of every query.
FILTER = 'namespace=~"$namespace", pod=~"$pod"'
# Alerts about a set of pods rather than one: not grouped by pod.
NOT_PER_POD = {"SidecarConfigHashDrift": ["namespace"], "SidecarMetricsAbsent": None}

SEED_HIT_RATE = ("sum(rate(cache_hits_total[5m])) / (sum(rate(cache_hits_total[5m])) + "
                 "sum(rate(cache_misses_total[5m]))) * 100")
SEED_P95 = ("histogram_quantile(0.95, sum(rate(cache_latency_seconds_bucket[5m])) "
            "by (le, operation))")

# Labels that Prometheus adds at scrape time (target labels), not the sidecar.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "service", "endpoint"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta",
    "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
    "holt_winters", "double_exponential_smoothing", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month",
    "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sort_by_label", "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "atan2", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")

# Families the dashboard must chart (the brief's panel list).
CHARTED = {
    "cache_hits_total", "cache_misses_total", "cache_latency_seconds_bucket",
    "sidecar_upstream_duration_seconds_bucket", "sidecar_request_duration_seconds_count",
    "cache_stale_served_total", "cache_errors_total", "cache_breaker_open",
    "cache_coalesced_total", "cache_invalidations_total", "cache_purges_total",
    "cache_decrypt_failures_total", "config_reload_total", "config_info",
    "cache_backend_up", "sidecar_build_info", "process_cpu_seconds_total",
    "process_resident_memory_bytes",
}
ALERTED = {"CacheHitRateCollapsed", "CacheErrorRateHigh", "CacheBreakerOpen", "CacheBackendDown",
           "SidecarConfigReloadRejected", "SidecarUpstream5xxRateHigh",
           "SidecarUpstreamErrorsHigh", "CacheDecryptFailures", "CacheAuditLinesLost"}


# --- PromQL scanning ------------------------------------------------------------------------


def _strip(expr: str) -> str:
    """The expression without strings, matchers, ranges, grouping labels and numbers."""
    s = STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = GROUPING.sub(" ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"@\s*\S+", " ", s)
    return re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", s)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression; an unknown function name is an error."""
    s = _strip(expr)
    names = set()
    for match in IDENTIFIER.finditer(s):
        token = match.group()
        if token.lower() in KEYWORDS:
            continue
        if s[match.end():].lstrip().startswith("("):
            assert token in FUNCTIONS | AGGREGATIONS, f"unknown PromQL function {token}()"
            continue
        names.add(token)
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in grouping clauses and selectors."""
    s = STRING.sub('""', expr)
    labels: set[str] = set()
    for _, inside in GROUPING.findall(s):
        labels.update(x.strip() for x in inside.split(",") if x.strip())
    for matchers in re.findall(r"\{([^}]*)\}", STRING.sub(lambda m: "_" * len(m[0]), expr)):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def test_scanner() -> None:
    expr = ('sum by (rule, kind) (rate(a_total{status=~"5..", x="{y}"}[5m] offset 1h)) '
            '/ ignoring (kind) group_left () (sum(b_count) + 1e3) > 0.02 and on() c')
    assert metric_names(expr) == {"a_total", "b_count", "c"}
    assert label_names(expr) == {"rule", "kind", "status", "x"}
    assert metric_names(SEED_P95) == {"cache_latency_seconds_bucket"}
    assert label_names(SEED_P95) == {"le", "operation"}
    with pytest.raises(AssertionError, match="unknown PromQL function"):
        metric_names("rated(cache_hits_total[5m])")


# --- the real exposition ---------------------------------------------------------------------


@cache
def exposition() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from a Metrics() with a sample in every family."""
    metrics = Metrics()
    families = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(families) >= len(CHARTED) - 2
    for family in families:
        labelnames = family._labelnames
        child = family.labels(*["x"] * len(labelnames)) if labelnames else family
        if isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Gauge):
            child.set(1)
        elif isinstance(child, Histogram):
            child.observe(0.01)
        else:
            raise AssertionError(f"no way to record {type(child).__name__}")
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, set[str]] = {}
    for parsed in text_string_to_metric_families(text):
        assert parsed.samples, f"{parsed.name} has no sample: record one above"
        for sample in parsed.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in samples.items()}


def test_exposition_has_every_series_kind() -> None:
    names = exposition()
    assert {"cache_latency_seconds_bucket", "cache_latency_seconds_count",
            "cache_hits_total", "cache_breaker_open", "config_info"} <= names.keys()
    assert names["cache_latency_seconds_bucket"] == {"operation", "key_prefix", "le"}
    assert not any(n.endswith("_created") for n in names)


# --- the dashboard and the alerts --------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels() for t in p.get("targets", [])]


@cache
def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def expressions() -> list[tuple[str, str]]:
    exprs = [(f"dashboard: {title}", t["expr"]) for title, t in dashboard_targets()]
    exprs += [(f"alert: {r.get('alert') or r.get('record')}", r["expr"])
              for r in alert_rules()]
    return exprs


def test_seed_queries_appear_in_the_dashboard_with_only_the_variables_added() -> None:
    exprs = {t["expr"].replace("{" + FILTER + "}", "") for _, t in dashboard_targets()}
    assert SEED_HIT_RATE in exprs
    assert SEED_P95 in exprs


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its matchers or "") for every selector in the expression."""
    names = metric_names(expr)
    s = STRING.sub(lambda m: "_" * len(m[0]), expr)  # offsets kept, strings masked
    found = []
    for match in IDENTIFIER.finditer(s):
        if match.group() in names:
            rest = expr[match.end():]
            found.append((match.group(), rest[1:rest.index("}")] if rest.startswith("{")
                          else ""))
    return found


def test_dashboard_variables_filter_every_query() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name in ("namespace", "pod"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        query = variable["query"]["query"]
        assert query == variable["definition"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match and match.group(2) == name, query
        assert metric_names(match.group(1)) <= exposition().keys()
    assert "$namespace" in variables["pod"]["query"]["query"], "pods of the namespace"
    for title, target in dashboard_targets():
        selectors = _selectors(target["expr"])
        assert selectors, title
        for metric, matchers in selectors:
            assert matchers.startswith(FILTER), f"{title}: {metric} not filtered by {FILTER}"


def test_the_filter_check_catches_an_unfiltered_selector() -> None:
    assert _selectors('sum(rate(a_total{x="}"}[5m])) / b{' + FILTER + "}") == [
        ("a_total", 'x="'), ("b", FILTER)]


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=lambda v: str(v)[:60])
def test_every_metric_exists_in_the_sidecar_exposition(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    missing = names - exposition().keys()
    assert not missing, f"{where}: {sorted(missing)} not in the sidecar's /metrics"
    known = set().union(*(exposition()[n] for n in names)) | TARGET_LABELS
    unknown = label_names(expr) - known
    assert not unknown, f"{where}: labels {sorted(unknown)} not on {sorted(names)}"


def test_legends_and_annotations_name_real_labels() -> None:
    for title, target in dashboard_targets():
        known = set().union(*(exposition()[n] for n in metric_names(target["expr"])))
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert label in known | TARGET_LABELS, f"{title}: legend {{{{{label}}}}}"
    for rule in alert_rules():
        known = set().union(*(exposition()[n] for n in metric_names(rule["expr"])))
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in known | TARGET_LABELS, f"{rule['alert']}: $labels.{label}"


def test_dashboard_charts_every_family_it_must() -> None:
    used = set().union(*(metric_names(t["expr"]) for _, t in dashboard_targets()))
    assert used >= CHARTED, f"not charted: {sorted(CHARTED - used)}"


def test_dashboard_is_a_well_formed_grafana_model() -> None:
    model = dashboard()
    assert model["uid"] and model["title"] and model["schemaVersion"] >= 36
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_alert_rules_are_complete_and_point_to_runbooks() -> None:
    alerts = [r for r in alert_rules() if "alert" in r]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names)), "alert names are unique"
    assert set(names) >= ALERTED, f"missing alerts: {sorted(ALERTED - set(names))}"
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                             "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        notes = rule["annotations"]
        assert notes.get("summary") and notes.get("description"), rule["alert"]
        assert notes["runbook_url"] == f"docs/operations.md#alert-{rule['alert'].lower()}"
        assert "runbook" not in notes, "one link, under the conventional name runbook_url"
    collapse = next(r for r in alerts if r["alert"] == "CacheHitRateCollapsed")
    per_pod = SEED_HIT_RATE.replace("sum(rate", "sum by (namespace, pod) (rate")
    assert per_pod in collapse["expr"] and collapse["for"] == "15m"
    breaker = next(r for r in alerts if r["alert"] == "CacheBreakerOpen")
    assert breaker["for"] == "2m"


def test_alerts_are_grouped_per_namespace_and_pod() -> None:
    for rule in alert_rules():
        name = rule.get("alert") or rule.get("record")
        groupings = [[x.strip() for x in inside.split(",") if x.strip()]
                     for keyword, inside in GROUPING.findall(STRING.sub('""', rule["expr"]))
                     if keyword == "by"]
        aggregations = re.findall(r"\b(" + "|".join(AGGREGATIONS) + r")\s*(?:by\b|\()",
                                  STRING.sub('""', rule["expr"]))
        if name in NOT_PER_POD:
            expected = NOT_PER_POD[name]
            assert expected is None or all(expected[0] in g for g in groupings), name
            continue
        assert groupings and len(groupings) == len(aggregations), \
            f"{name}: every aggregation says `by (namespace, pod, ...)`"
        for labels in groupings:
            assert labels[:2] == ["namespace", "pod"], f"{name}: by ({', '.join(labels)})"


def test_backend_down_alerts_on_cache_backend_up() -> None:
    (rule,) = [r for r in alert_rules() if r.get("alert") == "CacheBackendDown"]
    assert metric_names(rule["expr"]) == {"cache_backend_up"}
    assert rule["labels"]["severity"] == "critical"


def _anchors(markdown: str) -> set[str]:
    anchors = set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", markdown))
    anchors.update(re.findall(r"\{#([\w-]+)\}", markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _link_resolves(link: str) -> bool:
    """An https URL, or `docs/<file>.md#<anchor>` naming a heading or anchor that exists."""
    if re.fullmatch(r"https://[\w.-]+(?:/\S*)?", link):
        return True
    path, sep, anchor = link.partition("#")
    target = ROOT / path
    return bool(sep and anchor and target.is_file() and target.parent == DOCS
                and anchor in _anchors(target.read_text()))


def test_every_runbook_url_resolves_to_a_url_or_an_existing_docs_anchor() -> None:
    links = {r["alert"]: r["annotations"].get("runbook_url") for r in alert_rules()
             if "alert" in r}
    assert all(links.values()), f"alerts without runbook_url: {links}"
    broken = {name: link for name, link in links.items() if not _link_resolves(link)}
    assert not broken, f"runbook links that do not resolve: {broken}"


def test_the_link_check_catches_a_missing_anchor() -> None:
    assert _link_resolves("docs/operations.md#alert-cachebreakeropen")
    assert not _link_resolves("docs/operations.md#alert-nosuchalert")
    assert not _link_resolves("docs/missing.md#alert-cachebreakeropen")
    assert not _link_resolves("docs/operations.md")


# --- promtool, where installed -----------------------------------------------------------------


def _promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = _promtool()
    _run(promtool, "check", "rules", ALERTS.name, cwd=ALERTS.parent)
    _run(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERTS.parent)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = [{"record": f"dashboard:query_{n}", "expr": t["expr"]}
             for n, (_, t) in enumerate(dashboard_targets())]
    (tmp_path / "dashboard.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(promtool, "check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
