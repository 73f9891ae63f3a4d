"""The Kubernetes manifests: schema validation and the deployment's invariants.

The kustomizations are rendered by `render` below, a small renderer for exactly the
kustomize fields these files use (resources, configMapGenerator with a fixed name,
strategic-merge patches merging lists by `name`); it rejects any other field, so a new
kustomize feature cannot be silently ignored. Where `kustomize` or `kubectl` is installed,
`test_renderer_matches_kustomize` checks the renderer's output against the real one.

Every rendered object but the ServiceMonitor (a CRD) is validated, strictly (unknown fields
are errors), against the Kubernetes OpenAPI schemas that the kubernetes-validate package
bundles (offline), for 1.29 (the first release with native sidecars on by default) and for
the newest bundled release. The ServiceMonitor is checked by hand.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from sidecar.listener import ADMIN_DRAIN_S, CANCEL_GRACE_S
from sidecar.pool import STOP_GRACE_S
from sidecar.rules import load_rules
from sidecar.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
CACHE_OFF = K8S / "overlays" / "cache-off"
SERVICE_MONITOR = K8S / "overlays" / "servicemonitor"
KUSTOMIZATIONS = {"base": BASE, "cache-off": CACHE_OFF, "servicemonitor": SERVICE_MONITOR}
SIDECAR = "cache-sidecar"
APP = "identity"
APP_PORT = 8000
SECRET_ENV = ("REDIS_URL", "CACHE_KEY_SECRET", "CACHE_ENCRYPTION_KEY", "SIDECAR_ADMIN_TOKEN")
MARGIN_S = 5  # what the sidecar does past its drain budget, signal delivery, process exit
EXIT_S = 1.0  # closing Redis and upstream connections, interpreter exit
SCHEMA_VERSIONS = ("1.29", kubernetes_validate.latest_version())

Obj = dict[str, Any]


# --- the renderer -------------------------------------------------------------------------


class RenderError(Exception):
    pass


KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches"}
GENERATOR_FIELDS = {"name", "files", "options"}
GENERATOR_OPTIONS = {"disableNameSuffixHash", "labels"}


def _load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _load(path: Path) -> Obj:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise RenderError(f"{path}: not a mapping")
    return doc


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the cases used here: maps merge recursively, null deletes,
    lists of named maps merge by `name`; any other list replaces."""
    if isinstance(patch, dict) and isinstance(target, dict):
        if any(str(k).startswith("$") for k in patch):
            raise RenderError(f"patch directives are not supported: {sorted(patch)}")
        out = dict(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(target, list) and _named(patch) and \
            _named(target):
        merged = [copy.deepcopy(item) for item in target]
        index = {item["name"]: n for n, item in enumerate(merged)}
        for item in patch:
            if item["name"] in index:
                merged[index[item["name"]]] = strategic_merge(merged[index[item["name"]]],
                                                              item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def render(directory: Path) -> list[Obj]:
    """`kustomize build directory`, for the fields listed in KUSTOMIZATION_FIELDS."""
    kustomization = _load(directory / "kustomization.yaml")
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{directory}: the test renderer does not know {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects.extend(render(path) if path.is_dir() else _load_all(path))
    for generator in kustomization.get("configMapGenerator", []):
        if set(generator) - GENERATOR_FIELDS:
            raise RenderError(f"configMapGenerator fields {sorted(generator)}")
        options = generator.get("options", {})
        if set(options) - GENERATOR_OPTIONS or options.get("disableNameSuffixHash") is not True:
            raise RenderError("configMapGenerator: only a fixed name (disableNameSuffixHash) "
                              "and labels are supported")
        data = {}
        for entry in generator["files"]:
            key, sep, source = entry.partition("=")
            if not sep:
                key, source = Path(entry).name, entry
            data[key] = (directory / source).read_text()
        meta: Obj = {"name": generator["name"]}
        if options.get("labels"):
            meta["labels"] = dict(options["labels"])
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                        "data": data})
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"patches: only `path:` entries are supported, got {entry}")
        patch = _load(directory / entry["path"])
        matches = [n for n, obj in enumerate(objects) if _identity(obj) == _identity(patch)]
        if len(matches) != 1:
            raise RenderError(f"patch {entry['path']} matches {len(matches)} objects")
        objects[matches[0]] = strategic_merge(objects[matches[0]], patch)
    return objects


def _identity(obj: Obj) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


@cache
def _rendered(name: str) -> tuple[Obj, ...]:
    return tuple(render(KUSTOMIZATIONS[name]))


def rendered(name: str) -> list[Obj]:
    objects: list[Obj] = copy.deepcopy(list(_rendered(name)))
    return objects


def the(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[Obj]) -> Obj:
    spec: Obj = the(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objects: list[Obj], name: str) -> Obj:
    spec = pod_spec(objects)
    found: list[Obj] = [c for c in spec.get("initContainers", []) + spec["containers"]
                        if c["name"] == name]
    assert len(found) == 1, f"container {name}"
    return found[0]


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def literal_env(c: Obj) -> dict[str, str]:
    return {name: str(e["value"]) for name, e in env_of(c).items() if "value" in e}


def port_number(c: Obj, port: int | str) -> int:
    """A probe's or Service's port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c.get("ports", []) if p["name"] == port]
    return int(number)


def sleep_seconds(c: Obj) -> float:
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    assert len(command) == 2 and command[0] in {"sleep", "/bin/sleep"}, \
        f"{c['name']}: preStop must be a plain sleep, got {pre_stop}"
    return float(command[1])


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            label = value.get("name", n) if isinstance(value, dict) else n
            yield from walk(value, f"{path}[{label}]")


def normalized(node: Any) -> Any:
    """Lists of uniquely named maps as maps keyed by name: their order carries no meaning
    here (no env value refers to another with $(VAR)) and kustomize reorders patched
    items."""
    if isinstance(node, dict):
        return {k: normalized(v) for k, v in node.items()}
    if isinstance(node, list):
        names = [i.get("name") for i in node if isinstance(i, dict)]
        if node and len(names) == len(node) and None not in names and \
                len(set(names)) == len(names):
            return {f"[{i['name']}]": normalized(i) for i in node}
        return [normalized(i) for i in node]
    return node


def flat(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flat(value, f"{path}/{key}"))
        return out
    return {path: node}


def by_identity(objects: list[Obj]) -> dict[tuple[str, str, str], Any]:
    return {_identity(o): normalized(o) for o in objects}


# --- the renderer itself ------------------------------------------------------------------


def test_renderer_rejects_fields_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(RenderError, match="namePrefix"):
        render(tmp_path)


def test_strategic_merge_by_name() -> None:
    target = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "x": 1}
    patch = {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "x": None}
    assert strategic_merge(target, patch) == {"env": [
        {"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renderer_matches_kustomize(name: str) -> None:
    command = _kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run([*command, str(KUSTOMIZATIONS[name])], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    real = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert by_identity(real) == by_identity(rendered(name))


# --- schema validation ---------------------------------------------------------------------


def _validatable() -> list[tuple[str, str, Obj]]:
    # Every object but the CRD-defined ServiceMonitor (checked by hand below).
    cases = [(name, f"{o['kind']}/{o['metadata']['name']}", o)
             for name in sorted(KUSTOMIZATIONS) for o in rendered(name)
             if o["kind"] != "ServiceMonitor"]
    cases.append(("example", "secret.example.yaml", _load(BASE / "secret.example.yaml")))
    return cases


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    checked = set()
    for source, label, obj in _validatable():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{source} {label} against {version}: {where}: {exc.message}")
        checked.add(obj["kind"])
    assert checked == {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
                       "NetworkPolicy"}


def test_schema_validation_catches_a_mistake() -> None:
    deployment = the(rendered("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[0], strict=True)


def test_servicemonitor_selects_only_the_metrics_service_and_its_admin_port() -> None:
    objects = rendered("servicemonitor")
    monitor = the(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    services = [o for o in objects if o["kind"] == "Service"
                if selector["matchLabels"].items() <= o["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in services] == ["identity-metrics"], \
        "the ServiceMonitor must not select the clients' Service"
    (service,) = services
    assert service["spec"]["clusterIP"] == "None", "headless: per-pod endpoints, no VIP"
    template_labels = the(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    sidecar = container(objects, SIDECAR)
    admin = Settings.from_env(_settings_env(sidecar)).admin_port
    assert monitor["spec"]["endpoints"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        assert endpoint["port"] in ports, f"ServiceMonitor port {endpoint['port']} unknown"
        assert endpoint.get("path", "/metrics") == "/metrics"
        target = ports[endpoint["port"]]["targetPort"]
        assert port_number(sidecar, target) == admin, "metrics come from the admin port"
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def _scrape_annotations(objects: list[Obj]) -> dict[str, str]:
    annotations = the(objects, "Deployment")["spec"]["template"]["metadata"].get(
        "annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_scraped_one_way_only_never_both(name: str) -> None:
    objects = rendered(name)
    monitors = [o for o in objects if o["kind"] in {"ServiceMonitor", "PodMonitor"}]
    annotated = _scrape_annotations(objects).get("prometheus.io/scrape") == "true"
    assert annotated != bool(monitors), f"{name}: annotations xor a ServiceMonitor"
    assert not _scrape_annotations(objects) or annotated, "no half-removed annotations"


def test_servicemonitor_overlay_only_swaps_the_scrape_mechanism() -> None:
    base = by_identity(rendered("base"))
    overlay = by_identity(rendered("servicemonitor"))
    added = {key[1:] for key in overlay.keys() - base.keys()}
    assert added == {("Service", "identity-metrics"),
                     ("ServiceMonitor", "identity-cache-sidecar")}
    assert base.keys() <= overlay.keys()
    differences = set()
    for key in base:
        before, after = flat(base[key]), flat(overlay[key])
        differences |= {(key[1], path) for path in before.keys() | after.keys()
                        if before.get(path) != after.get(path)}
    annotations = "/spec/template/metadata/annotations"
    assert differences == {("Deployment", f"{annotations}/prometheus.io/{name}")
                           for name in ("scrape", "port", "path")} | {
        ("Deployment", annotations)}


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([sm])", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# --- the deployment's invariants -----------------------------------------------------------


def _settings_env(sidecar: Obj) -> dict[str, str]:
    """The sidecar's environment, secrets replaced by well-formed stand-ins."""
    env = literal_env(sidecar)
    env.update({
        "REDIS_URL": "rediss://sidecar:stand-in@redis.example:6380/0",
        "CACHE_KEY_SECRET": "stand-in",
        "CACHE_ENCRYPTION_KEY": base64.b64encode(bytes(32)).decode(),
        "SIDECAR_ADMIN_TOKEN": "stand-in",
    })
    return env


def test_sidecar_is_a_native_sidecar_in_front_of_the_app() -> None:
    objects = rendered("base")
    spec = pod_spec(objects)
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == SIDECAR]
    assert sidecar["restartPolicy"] == "Always", "native sidecar (Kubernetes >= 1.29)"
    assert SIDECAR not in {c["name"] for c in spec["containers"]}
    app = container(objects, APP)
    assert app["image"] == "identity-service:latest"
    assert [p["containerPort"] for p in app["ports"]] == [APP_PORT]
    settings = Settings.from_env(_settings_env(sidecar))
    upstream = urlsplit(settings.upstream_url)
    assert upstream.hostname in {"127.0.0.1", "localhost"} and upstream.port == APP_PORT
    assert port_number(sidecar, "proxy") == settings.port
    assert port_number(sidecar, "admin") == settings.admin_port


def test_sidecar_environment_is_valid_for_the_sidecar() -> None:
    for name in KUSTOMIZATIONS:
        sidecar = container(rendered(name), SIDECAR)
        Settings.from_env(_settings_env(sidecar))  # raises ConfigError on a bad value
        for value in literal_env(sidecar).values():
            assert "$(" not in value, "env order is not significant (see `normalized`)"


def test_secrets_come_from_a_secret_never_from_literals() -> None:
    sidecar = container(rendered("base"), SIDECAR)
    env = env_of(sidecar)
    example = _load(BASE / "secret.example.yaml")
    for name in SECRET_ENV:
        assert "value" not in env[name], f"{name} must not be a literal"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == example["metadata"]["name"]
        assert not ref.get("optional", False), f"{name} is required"
        assert ref["key"] in example["stringData"], f"secret.example.yaml lacks {ref['key']}"
    for obj in rendered("base"):
        for path, node in walk(obj):
            if isinstance(node, dict) and "name" in node and "value" in node:
                assert not re.search(r"SECRET|TOKEN|PASSWORD|_KEY$|REDIS_URL",
                                     str(node["name"])), f"literal secret at {path}"


def test_secret_example_is_documented_and_never_deployed() -> None:
    example = _load(BASE / "secret.example.yaml")
    assert example["kind"] == "Secret"
    for key, value in example["stringData"].items():
        assert "REPLACE" in value, f"secret.example.yaml {key} must stay a placeholder"
    for name in KUSTOMIZATIONS:
        assert "Secret" not in {o["kind"] for o in rendered(name)}
    for path in K8S.rglob("kustomization.yaml"):
        assert "secret.example" not in path.read_text().split("#")[0]


def test_rules_configmap_is_mounted_as_a_directory_never_subpath() -> None:
    every_file = [doc for path in sorted(K8S.rglob("*.yaml")) if path.name != "routes.yaml"
                  for doc in _load_all(path)]
    for obj in every_file + [o for name in KUSTOMIZATIONS for o in rendered(name)]:
        for path, node in walk(obj):
            if isinstance(node, dict):
                assert not {"subPath", "subPathExpr"} & set(node), \
                    f"subPath at {path}: a subPath mount never sees ConfigMap updates"
    objects = rendered("base")
    config_map = the(objects, "ConfigMap")
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    sidecar = container(objects, SIDECAR)
    config = Path(literal_env(sidecar)["SIDECAR_CONFIG"])
    (mount,) = [m for m in sidecar["volumeMounts"]
                if volumes[m["name"]].get("configMap", {}).get("name") ==
                config_map["metadata"]["name"]]
    assert Path(mount["mountPath"]) == config.parent
    assert mount.get("readOnly") is True
    assert config.name in config_map["data"]
    assert "items" not in volumes[mount["name"]]["configMap"], "the whole ConfigMap"


def test_rules_copy_is_identical_to_config_routes_yaml() -> None:
    copy_ = BASE / "routes.yaml"
    assert copy_.read_bytes() == (ROOT / "config" / "routes.yaml").read_bytes(), \
        "deploy/kubernetes/base/routes.yaml drifted: cp config/routes.yaml " \
        "deploy/kubernetes/base/routes.yaml"
    assert load_rules(copy_).rules, "the deployed rules load"


def test_probes_use_the_admin_port() -> None:
    sidecar = container(rendered("base"), SIDECAR)
    admin = port_number(sidecar, "admin")
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must use {path}"
        assert port_number(sidecar, get["port"]) == admin == 9090, f"{probe} on the admin port"
    assert sidecar["livenessProbe"]["failureThreshold"] * sidecar["livenessProbe"][
        "periodSeconds"] >= 20, "liveness must not kill the pod on one slow scrape"
    app = container(rendered("base"), APP)
    assert "readinessProbe" in app, "the pod is ready only when the app is"


def sidecar_exit_s(settings: Settings) -> float:
    """The longest the sidecar takes from SIGTERM to exit, by the code's own constants."""
    if settings.workers > 1:  # the supervisor kills a worker still running at this point
        proxy = settings.shutdown_timeout + STOP_GRACE_S
    else:
        proxy = settings.shutdown_timeout + CANCEL_GRACE_S
    return proxy + ADMIN_DRAIN_S + CANCEL_GRACE_S + EXIT_S


def test_grace_period_covers_both_sleeps_and_drains() -> None:
    """Native sidecar order: app preStop, app drain, then sidecar preStop, sidecar drain."""
    for name in KUSTOMIZATIONS:
        objects = rendered(name)
        sidecar = container(objects, SIDECAR)
        app = container(objects, APP)
        settings = Settings.from_env(_settings_env(sidecar))
        shutdown = settings.shutdown_timeout
        assert literal_env(sidecar).get("SIDECAR_SHUTDOWN_TIMEOUT_S"), "set it explicitly"
        sidecar_sleep = sleep_seconds(sidecar)
        app_sleep = sleep_seconds(app)
        assert sidecar_sleep >= 1
        assert app_sleep >= 5, "the app must outlive the pod's removal from the endpoints"
        needed = app_sleep + shutdown + sidecar_sleep + shutdown + MARGIN_S
        grace = pod_spec(objects)["terminationGracePeriodSeconds"]
        assert grace >= needed, (
            f"terminationGracePeriodSeconds {grace} < app preStop {app_sleep} + app drain "
            f"{shutdown} + sidecar preStop {sidecar_sleep} + sidecar drain {shutdown} + "
            f"margin {MARGIN_S}")
        assert shutdown + MARGIN_S >= sidecar_exit_s(settings), \
            "the margin covers what the sidecar does after its budget"
        assert grace >= app_sleep + shutdown + sidecar_sleep + sidecar_exit_s(settings)


def test_the_margin_is_too_small_for_several_workers() -> None:
    """With SIDECAR_WORKERS > 1 the supervisor waits STOP_GRACE_S past the budget before it
    kills a stuck worker: the documented reason to raise the grace period for workers."""
    sidecar = container(rendered("base"), SIDECAR)
    one = Settings.from_env(_settings_env(sidecar))
    two = Settings.from_env({**_settings_env(sidecar), "SIDECAR_WORKERS": "2"})
    assert one.shutdown_timeout + MARGIN_S >= sidecar_exit_s(one)
    assert two.shutdown_timeout + MARGIN_S < sidecar_exit_s(two)


def test_service_targets_the_sidecar_not_the_app() -> None:
    objects = rendered("base")
    service = the(objects, "Service")
    sidecar = container(objects, SIDECAR)
    app = container(objects, APP)
    template_labels = the(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    http = ports["http"]
    assert http["port"] == 80
    assert isinstance(http["targetPort"], str), "target the sidecar's port by name"
    settings = Settings.from_env(_settings_env(sidecar))
    assert port_number(sidecar, http["targetPort"]) == settings.port == 8080
    assert len(ports) == 1, "the proxy port only: the admin port (purge) is not for clients"
    admin = port_number(sidecar, "admin")
    for port in ports.values():
        assert port_number(sidecar, port["targetPort"]) != admin and port["port"] != admin
    app_ports = {p["name"] for p in app["ports"]} | {p["containerPort"] for p in app["ports"]}
    for port in ports.values():
        assert port["targetPort"] not in app_ports, "nothing may bypass the sidecar"
    sidecar_ports = {p["name"] for p in sidecar["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= sidecar_ports


def test_security_context() -> None:
    objects = rendered("base")
    spec = pod_spec(objects)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False, "service links inject SIDECAR_*-like vars"
    for c in spec["initContainers"] + spec["containers"]:
        ctx = c["securityContext"]
        assert ctx.get("runAsNonRoot", pod["runAsNonRoot"]) is True, c["name"]
        assert ctx["readOnlyRootFilesystem"] is True, c["name"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx.get("privileged", False) is False, c["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert ctx.get("seccompProfile", pod["seccompProfile"])["type"] == "RuntimeDefault"
        volumes = {v["name"]: v for v in spec["volumes"]}
        (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]  # noqa: S108
        assert "emptyDir" in volumes[tmp["name"]], f"{c['name']}: /tmp is an emptyDir"
    sidecar = container(objects, SIDECAR)
    uid = sidecar["securityContext"].get("runAsUser", pod.get("runAsUser"))
    dockerfile_user = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(),
                                 re.MULTILINE)
    assert dockerfile_user and uid == int(dockerfile_user[-1]), "the image's USER uid"


def test_resources_have_requests_and_limits() -> None:
    spec = pod_spec(rendered("base"))
    for c in spec["initContainers"] + spec["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']} {kind}"


def test_prometheus_scrape_annotations_point_at_the_admin_port() -> None:
    objects = rendered("base")
    annotations = _scrape_annotations(objects)
    sidecar = container(objects, SIDECAR)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port_number(sidecar, "admin")
    assert annotations["prometheus.io/path"] == "/metrics"


def test_cache_off_overlay_only_disables_the_cache() -> None:
    base = by_identity(rendered("base"))
    overlay = by_identity(rendered("cache-off"))
    assert base.keys() == overlay.keys(), "same objects, same names"
    differences = {}
    for key in base:
        before, after = flat(base[key]), flat(overlay[key])
        for path in before.keys() | after.keys():
            if before.get(path) != after.get(path):
                differences[(key[1], path)] = (before.get(path), after.get(path))
    env_path = f"/spec/template/spec/initContainers/[{SIDECAR}]/env/[CACHE_ENABLED]/value"
    assert differences == {("Deployment", env_path): ("true", "false")}
    sidecar = container(rendered("cache-off"), SIDECAR)
    assert Settings.from_env(_settings_env(sidecar)).cache_enabled is False


# --- disruption budget and network policy ---------------------------------------------------


def test_disruption_budget_keeps_one_pod_and_never_blocks_a_drain() -> None:
    for name in KUSTOMIZATIONS:
        objects = rendered(name)
        budget = the(objects, "PodDisruptionBudget")
        deployment = the(objects, "Deployment")
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
        replicas = deployment["spec"]["replicas"]
        spec = budget["spec"]
        assert set(spec) & {"maxUnavailable", "minAvailable"} == {"maxUnavailable"}
        assert 1 <= spec["maxUnavailable"] < replicas, "one always serves, a drain proceeds"


def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels only: the test fails on anything else)."""
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def _admits(policy: Obj, port: int, namespace: str, pod: dict[str, str],
            own_namespace: str, c: Obj) -> bool:
    """Whether an Ingress policy admits a connection to `port` from that pod."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(port_number(c, p["port"]) == port for p in ports):
            continue
        peers = rule.get("from")
        if peers is None:
            return True
        for peer in peers:
            assert set(peer) <= {"namespaceSelector", "podSelector"}, f"peer {peer}"
            if "namespaceSelector" in peer:
                ns_ok = _selects(peer["namespaceSelector"],
                                 {"kubernetes.io/metadata.name": namespace})
            else:
                ns_ok = namespace == own_namespace
            if ns_ok and _selects(peer.get("podSelector"), pod):
                return True
    return False


@pytest.mark.parametrize(("namespace", "pod", "proxy", "admin"), [
    ("monitoring", {"app.kubernetes.io/name": "prometheus"}, True, True),
    ("monitoring", {"app.kubernetes.io/name": "grafana"}, True, False),
    ("identity-operators", {"app": "toolbox"}, True, True),
    ("identity", {"app.kubernetes.io/name": "identity"}, True, False),
    ("default", {"app.kubernetes.io/name": "prometheus"}, True, False),
])
def test_admin_port_only_from_prometheus_and_the_operators(
    namespace: str, pod: dict[str, str], proxy: bool, admin: bool,
) -> None:
    objects = rendered("base")
    policy = the(objects, "NetworkPolicy")
    template_labels = the(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"], template_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sidecar = container(objects, SIDECAR)
    settings = Settings.from_env(_settings_env(sidecar))
    here = "identity"
    assert _admits(policy, settings.port, namespace, pod, here, sidecar) is proxy
    assert _admits(policy, settings.admin_port, namespace, pod, here, sidecar) is admin
    assert not _admits(policy, APP_PORT, namespace, pod, here, sidecar), \
        "the app's port: only the sidecar, over loopback"


def test_policy_evaluation_catches_an_open_admin_port() -> None:
    objects = rendered("base")
    policy = the(objects, "NetworkPolicy")
    policy["spec"]["ingress"][1].pop("from")
    sidecar = container(objects, SIDECAR)
    assert _admits(policy, 9090, "default", {}, "identity", sidecar)


# --- the docs' kubectl commands -------------------------------------------------------------


def _kubectl_logs_commands() -> list[str]:
    """Every `kubectl logs ...` command quoted in the README and docs (line breaks joined)."""
    commands = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\s*\n\s*", " ", doc.read_text())
        commands += re.findall(r"`(kubectl logs [^`|]*)", text)
    return commands


def test_documented_kubectl_logs_commands_name_a_real_target() -> None:
    commands = _kubectl_logs_commands()
    assert len(commands) >= 3
    objects = rendered("base")
    deployment = the(objects, "Deployment")
    containers = {c["name"] for c in pod_spec(objects)["initContainers"] +
                  pod_spec(objects)["containers"]}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for command in commands:
        words = command.split()[2:]
        options = {w.split("=")[0]: w for w in words if w.startswith("-")}
        values = dict(zip(words, [*words[1:], ""], strict=True))
        positional = [w for n, w in enumerate(words) if not w.startswith("-")
                      and (n == 0 or words[n - 1] not in {"-c", "-n", "-l"})]
        assert positional or "-l" in options, f"{command}: no POD, TYPE/NAME or -l"
        if "-c" in values:
            assert values["-c"] in containers, f"{command}: no container {values['-c']}"
        for target in positional:
            if "/" in target:
                assert target == f"deploy/{deployment['metadata']['name']}", command
            else:
                assert target == "<pod>", f"{command}: {target}"
        if "-l" in values:
            key, _, value = values["-l"].partition("=")
            assert labels.get(key) == value, f"{command}: selects no pod"
            assert "--tail" in options, f"{command}: -l shows 10 lines a pod without --tail"
