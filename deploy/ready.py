"""Readiness probe: exit 0 when Redis answers PING through ``RESTATE_REDIS_URL``, else 1.

Uses the same URL parsing as the workers (``RedisStateStore.from_url``), so every URL form the
store accepts (standalone, TLS, Sentinel, Cluster) is checked the way the workers connect.
"""

from __future__ import annotations

import asyncio
import os
import sys

from restate_redis import RedisStateStore


async def ping(url: str) -> None:
    store = RedisStateStore.from_url(url)
    try:
        await store.client.ping()
    finally:
        await store.aclose()


def main() -> int:
    url = os.environ.get("RESTATE_REDIS_URL")
    if not url:
        print("RESTATE_REDIS_URL is not set", file=sys.stderr)
        return 1
    try:
        asyncio.run(asyncio.wait_for(ping(url), 3))
    except Exception as exc:
        print(f"Redis is not reachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
