"""The installed package's version: for `--version`, the log lines and `sidecar_build_info`.

Read from the package metadata, so it is the version that was built and installed, never a
second copy in the code that could drift from pyproject.toml.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

DISTRIBUTION = "identity-cache-sidecar"


@cache
def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"
