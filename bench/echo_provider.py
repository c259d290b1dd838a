"""A bare hypha-rpc echo service in its own process: the baseline of bench/bridge.py.

    python bench/echo_provider.py SERVER_URL TOKEN [--no-deflate]

Prints ``ready <workspace>`` once the service ``echo`` is registered, then serves until
it is stopped. A process of its own, like the bridge, so both paths cross the same number
of process boundaries.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from hypha_rpc import connect_to_server

from bioengine_operator.bridge import hypha


async def serve(url: str, token: str) -> None:
    server = await connect_to_server({"server_url": url, "token": token, "method_timeout": 120})

    async def echo(x: Any) -> Any:
        return x

    await server.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": echo})
    print(f"ready {server.config.workspace}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--no-deflate", action="store_true")
    args = parser.parse_args()
    if args.no_deflate:
        hypha.disable_compression()
    asyncio.run(serve(args.url, args.token))


if __name__ == "__main__":
    main()
