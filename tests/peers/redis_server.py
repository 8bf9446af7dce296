"""A throwaway ``redis-server`` on loopback: a free port, no persistence, killed on exit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import redis.asyncio as redis

from tests.peers.availability import require_binary


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def redis_server(timeout: float = 10.0) -> AsyncIterator[str]:
    """Start redis-server (``--save ''``, no AOF) and yield its URL once it answers PING."""
    binary = require_binary("redis-server")
    port = _free_tcp_port()
    process = await asyncio.create_subprocess_exec(
        binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--loglevel", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        try:
            for _ in range(int(timeout / 0.05)):
                if process.returncode is not None:
                    output = await process.stdout.read() if process.stdout else b""
                    raise RuntimeError(f"redis-server exited: {output.decode(errors='replace')}")
                with contextlib.suppress(redis.ConnectionError):
                    await client.ping()
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError(f"redis-server on port {port} did not answer in {timeout}s")
        finally:
            await client.aclose()
        yield url
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
