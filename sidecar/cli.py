"""Command line: `sidecar [--config PATH] [--check] [--version]`.

Exit codes: 0 clean stop (or `--check` passed), 78 (`EX_CONFIG`) a configuration error
(rules file or environment; nothing was started), 1 any other start-up failure, such as a
port already in use. Start-up failures are one JSON log line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from sidecar import event_loop
from sidecar.errors import ConfigError
from sidecar.logs import configure_logging
from sidecar.rules import RuleSet, load_rules
from sidecar.settings import DEFAULT_CONFIG, ENV_VARS, LOG_LEVELS, OTHER_ENV_VARS, Settings
from sidecar.version import version

EXIT_CONFIG = 78  # sysexits.h EX_CONFIG
EXIT_STARTUP = 1
log = logging.getLogger("sidecar")


def config_path(cli_value: str | None) -> Path:
    """--config, else SIDECAR_CONFIG, else the rules shipped inside the package."""
    return Path(cli_value or os.environ.get("SIDECAR_CONFIG") or DEFAULT_CONFIG)


def _parser() -> argparse.ArgumentParser:
    names = (*OTHER_ENV_VARS, *ENV_VARS)
    parser = argparse.ArgumentParser(
        prog="sidecar", description="Caching reverse-proxy sidecar for the identity API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (environment variables; defaults and meaning in the README's "
               "'Configuration' table):\n  " + "\n  ".join(
                   " ".join(names[i:i + 3]) for i in range(0, len(names), 3))
               + f"\n\nexit codes: 0 ok, {EXIT_CONFIG} configuration error, "
                 f"{EXIT_STARTUP} other start-up failure (e.g. a port in use)")
    parser.add_argument("--config", help="route rules YAML (default: $SIDECAR_CONFIG, else "
                                         f"the packaged {DEFAULT_CONFIG.name})")
    parser.add_argument("--check", action="store_true",
                        help="validate the rules file and the environment, then exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    # Set by the supervisor of SIDECAR_WORKERS > 1 for each worker it starts.
    parser.add_argument("--worker-socket", help=argparse.SUPPRESS)
    parser.add_argument("--worker-lifeline", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker_socket is not None:
        # A reload the supervisor passes on while this worker starts must not kill it (the
        # default action): the rules are read below, and the event loop takes SIGHUP over.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    path = config_path(args.config)
    problems: list[str] = []
    settings: Settings | None = None
    rules: RuleSet | None = None
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        problems += exc.problems
    try:
        rules = load_rules(path)
    except ConfigError as exc:
        problems += exc.problems
    if args.check:
        return _report(path, rules, problems, settings)
    level = os.environ.get("SIDECAR_LOG_LEVEL", "").strip().upper()
    worker_fields = {"pid": os.getpid()} if args.worker_socket is not None else None
    configure_logging(settings.log_level if settings else
                      level if level in LOG_LEVELS else "INFO", worker_fields)
    if settings is None or rules is None:
        log.error("configuration rejected: not started", extra={
            "problems": problems, "exit_code": EXIT_CONFIG, "version": version()})
        return EXIT_CONFIG
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
    try:
        event_loop.run(serve(settings, rules, path, worker), settings.event_loop)
    except ConfigError as exc:  # not caught by from_env: a gap to close there
        log.error("configuration rejected: not started", extra={
            "problems": exc.problems, "exit_code": EXIT_CONFIG, "version": version()})
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start: %s", exc.strerror or exc, extra={
            "exit_code": EXIT_STARTUP, "errno": exc.errno, "version": version()})
        return EXIT_STARTUP
    return 0


def _report(path: Path, rules: RuleSet | None, problems: list[str],
            settings: Settings | None) -> int:
    """`--check`'s output; a reader that stops early (`| head -3`) ends it quietly."""
    try:
        if problems or rules is None or settings is None:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        for rule in rules.rules:
            if rule.share is not None and settings.jwt_jwks_url is None:
                print(f"warning: {rules.source}: rule {rule.name!r} has share: but "
                      "CACHE_JWT_JWKS_URL is not set: no caller is shared (each keeps its "
                      "own variant)", file=sys.stderr)
        print(f"{path}: OK ({len(rules.rules)} rules, hash {rules.digest})")
        for rule in rules.rules:
            print(f"  {rule.name}: {rule.path} -> {rule.key} ttl={rule.ttl}s"
                  f" (env {rule.ttl_env})" + (" audit" if rule.audit else "")
                  + (" share" if rule.share is not None else ""))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the failed flush at exit: point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
