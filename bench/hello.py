"""The Python ceiling: a bare aiohttp server answering every GET with a fixed ~1.5 KB JSON
body, access log off. Usage: python -m bench.hello PORT [uvloop]
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

BODY = json.dumps({"resourceType": "Patient", "id": "42", "padding": "x" * 1440}).encode()


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    loop = None
    if sys.argv[2:] == ["uvloop"]:  # the same ceiling on the sidecar's event loop
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None, handle_signals=True, loop=loop)


if __name__ == "__main__":
    main()
