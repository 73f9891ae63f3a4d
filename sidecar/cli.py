"""Command line: `sidecar [--config PATH] [--check]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
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
    # Set by the supervisor of SIDECAR_WORKERS > 1 for each worker it starts.
    parser.add_argument("--worker-socket", help=argparse.SUPPRESS)
    parser.add_argument("--worker-lifeline", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_socket is not None:
        # A reload the supervisor passes on while this worker starts must not kill it (the
        # default action): the rules are read below, and the event loop takes SIGHUP over.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
    worker_fields = {"pid": os.getpid()} if args.worker_socket is not None else None
    configure_logging(os.environ.get("SIDECAR_LOG_LEVEL", "INFO"), worker_fields)
    if args.worker_socket is None and settings.workers > 1:
        from sidecar.supervisor import supervise  # sets up multiprocess metrics first

        return supervise(settings, rules, path)
    from sidecar.server import serve  # keep --check free of the server's imports
    from sidecar.worker import WorkerLink

    worker = None
    if args.worker_socket is not None:
        if args.worker_lifeline is None:
            parser.error("--worker-socket needs --worker-lifeline")
        worker = WorkerLink(Path(args.worker_socket), args.worker_lifeline)
    asyncio.run(serve(settings, rules, path, worker))
    return 0
