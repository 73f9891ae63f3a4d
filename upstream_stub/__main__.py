"""``python -m upstream_stub``: serve the stub configured from ``STUB_*`` variables."""

from __future__ import annotations

import os

from aiohttp import web

from upstream_stub.app import build_app
from upstream_stub.settings import StubSettings


def main() -> None:
    settings = StubSettings.from_env(os.environ)
    # run_app turns SIGINT/SIGTERM into a graceful exit; a short grace keeps fault tests quick.
    web.run_app(
        build_app(settings), host=settings.host, port=settings.port,
        access_log=None, shutdown_timeout=2.0,
    )


if __name__ == "__main__":
    main()
