"""What the wheel ships: the product package with its default rules and typing marker."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_only_the_sidecar_package_is_installed() -> None:
    include = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["sidecar*"], "upstream_stub is the demo's stand-in, not the product"


def test_the_default_rules_and_py_typed_are_package_data() -> None:
    assert set(PROJECT["tool"]["setuptools"]["package-data"]["sidecar"]) >= {
        "routes.yaml", "py.typed"}
    assert resources.files("sidecar").joinpath("routes.yaml").is_file()
    assert resources.files("sidecar").joinpath("py.typed").is_file()


def test_metadata_names_the_readme_and_every_supported_python() -> None:
    project = PROJECT["project"]
    assert project["readme"] == "README.md"
    assert project["requires-python"] == ">=3.11"
    for minor in (11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
