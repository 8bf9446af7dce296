"""Running sipp on loopback against an endpoint in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.peers.availability import require_binary

SCENARIOS = Path(__file__).parent / "scenarios"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SippResult:
    returncode: int
    output: str


async def start_sipp(*args: str) -> asyncio.subprocess.Process:
    """Start sipp bound to loopback, bounded to one call and 30 s; ``args`` add the rest."""
    binary = require_binary("sipp")
    return await asyncio.create_subprocess_exec(
        binary,
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
        "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def finish(process: asyncio.subprocess.Process, timeout: float = 40.0) -> SippResult:
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    return SippResult(process.returncode or 0, output.decode(errors="replace")[-3000:])


async def run_sipp(*args: str, timeout: float = 40.0) -> SippResult:
    return await finish(await start_sipp(*args), timeout)
