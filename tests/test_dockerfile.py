"""Static checks of the Dockerfile, .dockerignore and requirements.lock.

Building the image needs a Docker engine, which CI does not have, so these tests read the
files' text and check each property the image must have: a multi-stage build from the
hashed lock file, a numeric non-root user, exec-form entrypoint, no secrets, the rules
file as the default config, and a build context that lets through only what is copied.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sidecar.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"

SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSW(OR)?D|PASSWD|_KEY($|_)|APIKEY|CREDENTIAL|PRIVATE|AUTH", re.IGNORECASE)
CREDENTIAL_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|-----BEGIN|Bearer\s", re.IGNORECASE)


# --- a small Dockerfile parser -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case
    args: str  # everything after the keyword, continuation lines joined
    stage: int  # index of the FROM it belongs to; -1 for global ARGs before the first FROM
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with `\\` continuations joined and comment lines dropped (as BuildKit)."""
    assert not re.search(r"^#\s*escape\s*=", text, re.MULTILINE | re.IGNORECASE), \
        "this parser assumes the default escape character"
    out: list[Instruction] = []
    stage = -1
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, where Docker drops comment lines too
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        parts = []
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage, start))
    assert not parts, "the Dockerfile ends inside a line continuation"
    return out


@cache
def instructions() -> tuple[Instruction, ...]:
    return tuple(parse_dockerfile(DOCKERFILE.read_text()))


def stage_count() -> int:
    return max(i.stage for i in instructions()) + 1


def in_stage(stage: int, keyword: str | None = None) -> list[Instruction]:
    return [i for i in instructions()
            if i.stage == stage and (keyword is None or i.keyword == keyword)]


def final_stage() -> int:
    return stage_count() - 1


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None  # Docker runs an invalid JSON array in shell form
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def flags_and_words(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=builder --chown=1:1 a b` -> ({"from": "builder", "chown": "1:1"}, [a, b])."""
    flags: dict[str, str] = {}
    words: list[str] = []
    for token in shlex.split(args):
        if token.startswith("--") and not words:
            name, _, value = token[2:].partition("=")
            flags[name] = value
        else:
            words.append(token)
    return flags, words


def key_values(inst: Instruction) -> dict[str, str]:
    """ENV / ARG / LABEL pairs, in both `K=V K2=V2` and legacy `ENV K V` forms."""
    tokens = shlex.split(inst.args)
    if inst.keyword == "ENV" and tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    pairs: dict[str, str] = {}
    for token in tokens:
        name, _, value = token.partition("=")
        pairs[name] = value
    return pairs


def stage_env(stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for inst in in_stage(stage, "ENV"):
        env.update(key_values(inst))
    return env


def global_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for inst in in_stage(-1, "ARG"):
        args.update(key_values(inst))
    return args


def base_image(stage: int) -> str:
    (inst,) = in_stage(stage, "FROM")
    _, words = flags_and_words(inst.args)
    image = words[0]
    for name, value in global_args().items():
        image = image.replace("${" + name + "}", value).replace("$" + name, value)
    return image


def stage_name(stage: int) -> str | None:
    (inst,) = in_stage(stage, "FROM")
    _, words = flags_and_words(inst.args)
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def run_commands(stage: int) -> list[str]:
    return [i.args for i in in_stage(stage, "RUN")]


def copies(stage: int | None = None) -> list[tuple[dict[str, str], list[str], str]]:
    """(flags, sources, destination) of each COPY/ADD."""
    out = []
    for inst in instructions():
        if inst.keyword in {"COPY", "ADD"} and (stage is None or inst.stage == stage):
            flags, words = flags_and_words(inst.args)
            out.append((flags, words[:-1], words[-1]))
    return out


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile(
        "ARG BASE=python:3.11-slim\nFROM ${BASE} AS a\n# c\nRUN one \\\n  # inner comment\n"
        "    two\nENV A=1 \\\n    B=\"x y\"\nFROM ${BASE}\nENTRYPOINT [\"python\"]\n")
    assert [(i.keyword, i.stage) for i in parsed] == [
        ("ARG", -1), ("FROM", 0), ("RUN", 0), ("ENV", 0), ("FROM", 1), ("ENTRYPOINT", 1)]
    assert parsed[2].args == "one two"
    assert key_values(parsed[3]) == {"A": "1", "B": "x y"}
    assert exec_form(parsed[5].args) == ["python"]
    assert exec_form("python -m sidecar") is None


# --- the image -------------------------------------------------------------------------


def test_multi_stage_build_on_slim_python_311() -> None:
    assert stage_count() >= 2, "a builder stage and a runtime stage"
    assert stage_name(0) == "builder"
    for stage in range(stage_count()):
        image = base_image(stage)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), \
            f"stage {stage} is built on {image!r}, not a slim Python 3.11 image"
    assert base_image(0) == base_image(final_stage()), \
        "the copied venv's python symlink needs the same base in both stages"


def test_dependencies_are_installed_from_the_hashed_lock_in_the_builder() -> None:
    builder = 0
    assert any(sources == ["requirements.lock"] for _, sources, _ in copies(builder))
    installs = [cmd for cmd in run_commands(builder) if "-r requirements.lock" in cmd]
    assert len(installs) == 1, "dependencies come from requirements.lock, once"
    (cmd,) = installs
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in cmd, f"the lock install needs {flag}"
    assert "/opt/venv/bin/python" in cmd, "into the venv that the runtime stage copies"
    assert any("python -m venv" in cmd for cmd in run_commands(builder))
    project = [cmd for cmd in run_commands(builder) if re.search(r"install .*\s\.(\s|$)", cmd)]
    assert project and all("--no-deps" in cmd for cmd in project), \
        "the project itself must not pull unpinned dependencies"


def test_runtime_stage_copies_the_venv_and_installs_nothing() -> None:
    final = final_stage()
    assert any(flags.get("from") == stage_name(0) and sources == ["/opt/venv"]
               for flags, sources, _ in copies(final))
    assert not any(re.search(r"\bpip\b|apt-get|apk ", cmd) for cmd in run_commands(final)), \
        "the runtime stage installs nothing (all of it is in the builder's venv)"
    assert stage_env(final)["PATH"].startswith("/opt/venv/bin:")


def test_runs_as_a_numeric_non_root_user() -> None:
    users = in_stage(final_stage(), "USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].args
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER {user!r} is not numeric (runAsNonRoot can only check a numeric uid)"
    assert int(match.group(1)) != 0 and int(match.group(2) or 1) != 0, "USER must not be root"
    last_run = max((i.line for i in in_stage(final_stage(), "RUN")), default=0)
    assert users[-1].line > last_run, "no RUN after USER: nothing runs as root at start-up"


def test_entrypoint_and_cmd_are_exec_form() -> None:
    final = final_stage()
    (entrypoint,) = in_stage(final, "ENTRYPOINT")
    assert exec_form(entrypoint.args) == ["python", "-m", "sidecar"], \
        "exec form, so python is PID 1 and receives SIGTERM itself"
    for inst in in_stage(final, "CMD"):
        assert exec_form(inst.args) is not None, f"CMD on line {inst.line} is shell form"
    for inst in in_stage(final, "HEALTHCHECK"):
        flags, _ = flags_and_words(inst.args)
        command = inst.args.split("CMD", 1)[1].strip() if "CMD" in inst.args else ""
        assert inst.args == "NONE" or exec_form(command) is not None, "HEALTHCHECK in exec form"
        assert set(flags) <= {"interval", "timeout", "start-period", "start-interval",
                              "retries"}
    for inst in in_stage(final, "STOPSIGNAL"):
        assert inst.args == "SIGTERM", "the sidecar drains on SIGTERM"


def test_no_secrets_in_env_arg_or_labels() -> None:
    for inst in instructions():
        if inst.keyword not in {"ENV", "ARG", "LABEL"}:
            continue
        for name, value in key_values(inst).items():
            assert not SECRET_NAME.search(name), \
                f"line {inst.line}: {inst.keyword} {name} looks like a secret"
            assert not CREDENTIAL_VALUE.search(value), \
                f"line {inst.line}: {inst.keyword} {name} holds a credential"
    secret_settings = {"REDIS_URL", "CACHE_KEY_SECRET", "CACHE_ENCRYPTION_KEY",
                       "CACHE_ENCRYPTION_KEY_PREVIOUS", "SIDECAR_ADMIN_TOKEN"}
    for stage in range(stage_count()):
        assert not secret_settings & set(stage_env(stage)), "secrets come from the pod's env"
    for _, sources, _ in copies():
        for source in sources:
            assert not re.search(r"\.env$|\.pem$|\.key$|secret|\.acl$", source, re.IGNORECASE)


def test_rules_file_is_copied_and_is_the_default_config() -> None:
    final = final_stage()
    destinations = [dest for flags, sources, dest in copies(final)
                    if sources == ["config/routes.yaml"] and "from" not in flags]
    assert len(destinations) == 1, "config/routes.yaml is copied into the image"
    (dest,) = destinations
    assert PurePosixPath(dest).is_absolute() and dest.endswith("/routes.yaml")
    assert stage_env(final)["SIDECAR_CONFIG"] == dest


def test_read_only_root_friendly() -> None:
    final = final_stage()
    env = stage_env(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert any("compileall" in cmd for cmd in run_commands(0)), "bytecode compiled at build"
    assert not in_stage(final, "VOLUME"), "VOLUME would hide read-only-root mistakes"
    for flags, _, _ in copies(final):
        assert "chown" not in flags and "chmod" not in flags, \
            "files stay root-owned and read-only for the runtime user"


def test_exposes_the_proxy_and_admin_ports_the_sidecar_defaults_to() -> None:
    exposed = {int(port.split("/")[0])
               for inst in in_stage(final_stage(), "EXPOSE") for port in inst.args.split()}
    defaults = Settings()
    assert exposed == {defaults.port, defaults.admin_port} == {8080, 9090}
    env = stage_env(final_stage())
    assert env.get("SIDECAR_PORT", "8080") == "8080"
    assert env.get("SIDECAR_ADMIN_PORT", "9090") == "9090"


# --- requirements.lock ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    name: str  # canonical
    version: Version
    hashes: tuple[str, ...]


@cache
def lock() -> dict[str, Pin]:
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", spec)
        assert match, f"requirements.lock: {spec!r} is not pinned with =="
        hashes = tuple(o.removeprefix("--hash=") for o in options if o.startswith("--hash="))
        assert len(hashes) == len(options), f"requirements.lock: unexpected options {options}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"requirements.lock: {name} pinned twice"
        pins[name] = Pin(name, Version(match.group(2)), hashes)
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_lock_pins_every_package_with_sha256_hashes() -> None:
    assert lock(), "requirements.lock is empty"
    for pin in lock().values():
        assert pin.hashes, f"{pin.name} has no --hash (pip --require-hashes would refuse)"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.name


def test_lock_satisfies_the_project_dependencies() -> None:
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in lock(), f"{req} (pyproject.toml) is missing from requirements.lock"
        assert req.specifier.contains(lock()[name].version, prereleases=True), \
            f"requirements.lock pins {name}=={lock()[name].version}, outside {req}"
    dev = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["dev"]
    for raw in dev:
        name = canonicalize_name(Requirement(raw).name)
        if name not in {canonicalize_name(r.name) for r in runtime_requirements()}:
            assert name not in lock(), f"dev tool {name} does not belong in the image"


def _requires(name: str, extras: frozenset[str]) -> Iterator[Requirement]:
    for raw in metadata.requires(name) or []:
        req = Requirement(raw)
        if req.marker is None or any(req.marker.evaluate({"extra": e})
                                     for e in extras | {""}):
            yield req


def test_lock_is_closed_under_the_installed_dependency_metadata() -> None:
    """Every requirement of a locked package is locked too (pip runs with --no-deps).

    Read from the venv's installed metadata for the packages whose installed version is
    the locked one (a fresh venv may hold newer releases); markers evaluated for this
    interpreter (the image's is also 3.11).
    """
    extras: dict[str, set[str]] = {}
    for req in runtime_requirements():
        extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    checked = 0
    for pin in lock().values():
        try:
            installed = Version(metadata.version(pin.name))
        except metadata.PackageNotFoundError:
            continue
        if installed != pin.version:
            continue
        checked += 1
        for req in _requires(pin.name, frozenset(extras.get(pin.name, set()))):
            dep = canonicalize_name(req.name)
            assert dep in lock(), f"{pin.name} needs {req}, which requirements.lock lacks"
            assert req.specifier.contains(lock()[dep].version, prereleases=True), \
                f"{pin.name} needs {req}; the lock has {lock()[dep].version}"
    if not checked:
        pytest.skip("no locked version is installed here (a venv newer than the lock)")


# --- .dockerignore ----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over a path."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


@cache
def ignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exclusion, _pattern_regex(pattern)))
    return tuple(rules)


def in_context(path: str) -> bool:
    """Whether the build context holds `path` (moby patternmatcher semantics, last wins)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for exclusion, regex in ignore_rules():
        if exclusion != ignored:
            continue  # an exception only matters once ignored, and the other way round
        if any(regex.match(p) for p in prefixes):
            ignored = not exclusion
    return not ignored


def context_sources() -> list[str]:
    return [os.path.normpath(s).rstrip("/")
            for flags, sources, _ in copies() if "from" not in flags for s in sources]


def repo_files() -> Iterator[str]:
    skip = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"}
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            yield os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, "/")


def test_dockerignore_matcher() -> None:
    assert _pattern_regex("**/__pycache__").match("a/b/__pycache__")
    assert _pattern_regex("**/*.py[cod]").match("x.pyc")
    assert not _pattern_regex("*").match("a/b")


def test_build_context_holds_every_copied_file_and_nothing_else() -> None:
    sources = context_sources()
    assert sources, "the Dockerfile copies files from the build context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"
        assert in_context(source), f".dockerignore leaves out COPY source {source}"
    for path in repo_files():
        copied = any(path == s or path.startswith(s + "/") for s in sources)
        if in_context(path):
            assert copied or path in {"Dockerfile", ".dockerignore"}, \
                f"{path} reaches the build context but is never copied"
        elif copied:
            assert "__pycache__" in path or path.endswith((".pyc", ".pyo", ".swp")), \
                f"{path} is under a COPY source but left out of the context"


@pytest.mark.parametrize("path", [
    ".env", ".git/config", ".venv/bin/python", "tests/conftest.py", "deploy/redis/users.acl",
    "deploy/kubernetes/base/secret.example.yaml", "secrets/redis-client.key",
    "sidecar/__pycache__/app.cpython-311.pyc", "config/local-override.yaml",
])
def test_build_context_excludes(path: str) -> None:
    assert not in_context(path)
