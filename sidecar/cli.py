"""Command line: `sidecar [--config PATH] [--check]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from sidecar.errors import ConfigError
from sidecar.logs import configure_logging
from sidecar.rules import load_rules
from sidecar.settings import DEFAULT_CONFIG, Settings


def config_path(cli_value: str | None) -> Path:
    """--config, else SIDECAR_CONFIG, else config/routes.yaml."""
    return Path(cli_value or os.environ.get("SIDECAR_CONFIG") or DEFAULT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sidecar", description="Caching reverse-proxy sidecar for the identity API.")
    parser.add_argument("--config", help="route rules YAML (default: $SIDECAR_CONFIG or "
                                         "config/routes.yaml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the rules file and the environment, then exit")
    args = parser.parse_args(argv)
    path = config_path(args.config)
    try:
        settings = Settings.from_env()
        rules = load_rules(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{path}: OK ({len(rules.rules)} rules, hash {rules.digest})")
        for rule in rules.rules:
            print(f"  {rule.name}: {rule.path} -> {rule.key} ttl={rule.ttl}s"
                  f" (env {rule.ttl_env})")
        return 0
    configure_logging(os.environ.get("SIDECAR_LOG_LEVEL", "INFO"))
    from sidecar.server import serve  # keep --check free of the server's imports

    asyncio.run(serve(settings, rules, path))
    return 0
