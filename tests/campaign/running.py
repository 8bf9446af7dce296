"""A bridge with its SIP front door and campaign service on loopback, and sipp far ends, for the
interface tests (HTTP API, CLI, page) and the Redis sharing test.

The campaigns run a one-step dialplan ("notify": a short fixed sentence, then hang up), so each
answered call lasts about two seconds; the far ends are sipp UASs that answer (and wait for the
bridge's BYE) or answer busy (tests/campaign/uas.py), one process serving every call to its
port and logging the SIP traffic the tests measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bridge.campaign.service import CampaignService, open_campaigns
from bridge.config import Config, SipConfig
from bridge.server import Bridge, build_app
from bridge.sip.front import SipFront
from bridge.speech.factory import SpeechEngines
from tests.campaign.uas import BUSY, FarEnd, start_far_end, stop_far_ends
from tests.sip.calls import callee_scenario
from tests.sip.sipp import free_port

NOTIFY = """\
name: notify
description: campaign test plan, one sentence then hang up
serves:
  sip: [notify]
language: en
start: hello
steps:
  hello:
    say: Hello, this is a short test call.  # fixed: synthesised once at start-up
    barge_in: false
    hangup: done
"""
ALLOWED = ["sip:*@127.0.0.1"]


def write_dialplans(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notify.yaml").write_text(NOTIFY)
    return folder


@dataclass
class CampaignBridge:
    http: str
    bridge: Bridge
    front: SipFront
    service: CampaignService
    records: Path


StartCampaignBridge = Callable[[], Awaitable[CampaignBridge]]


@contextlib.asynccontextmanager
async def bridges(
    tmp_path: Path, engines: SpeechEngines | None, redis_url: str | None = None
) -> AsyncIterator[StartCampaignBridge]:
    """Start bridges whose campaign service keeps SQLite under ``tmp_path`` and looks for work
    five times a second; without ``engines`` no call can be placed."""
    running: list[tuple[asyncio.Task[None], CampaignService, SipFront, Bridge, web.AppRunner]] = []

    async def start() -> CampaignBridge:
        config = Config()
        config.dialog.dialplans_dir = str(write_dialplans(tmp_path / "dialplans"))
        config.records.dir = str(tmp_path / "records")
        config.campaigns.dir = str(tmp_path / "campaigns")
        config.campaigns.poll_s = 0.2
        config.campaigns.ring_timeout_s = 5
        config.campaigns.redis_url = redis_url
        rtp = free_port() & ~1
        config.sip = SipConfig(port=0, rtp_ports=f"{rtp}-{rtp + 40}", outbound_targets=ALLOWED)
        bridge = Bridge(config)
        if engines is not None:
            await bridge.warm_prompts(engines)
            bridge.engines = engines
        front = SipFront(bridge, config.sip)
        await front.start()
        service = await open_campaigns(config, bridge, front)
        runner = web.AppRunner(build_app(bridge, front, service), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        task = asyncio.create_task(service.run())
        running.append((task, service, front, bridge, runner))
        return CampaignBridge(
            f"http://127.0.0.1:{port}", bridge, front, service, tmp_path / "records"
        )

    try:
        yield start
    finally:
        for task, service, front, bridge, runner in running:
            task.cancel()
            await service.close(grace_s=0)
            await front.close()
            await bridge.shutdown()
            await runner.cleanup()


@pytest.fixture
async def api_bridge(tmp_path: Path) -> AsyncIterator[CampaignBridge]:
    """A bridge without speech engines: the API works, no call is placed."""
    async with bridges(tmp_path, None) as start:
        yield await start()


@pytest.fixture
async def calling_bridge(
    tmp_path: Path, speech_engines: SpeechEngines
) -> AsyncIterator[CampaignBridge]:
    """A bridge that places campaign calls (the embedded engines, the "notify" plan)."""
    async with bridges(tmp_path, speech_engines) as start:
        yield await start()


@contextlib.asynccontextmanager
async def far_end(tmp_path: Path, kind: str) -> AsyncIterator[FarEnd]:
    """A sipp UAS (see uas.py): ``kind`` "answer" (answers, waits for the bridge's BYE) or
    "busy" (486)."""
    scenario = callee_scenario(tmp_path / "answer.xml") if kind == "answer" else BUSY
    far = await start_far_end(kind, scenario, tmp_path)
    await asyncio.sleep(0.5)  # let sipp bind
    try:
        yield far
    finally:
        await stop_far_ends([far])


async def api(
    method: str, url: str, body: object = None, *, raw: bytes | None = None
) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body if raw is None else None, data=raw) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text.startswith("{") else {"text": text}


async def until(
    check: Callable[[], Awaitable[object]], timeout: float = 60, interval: float = 0.2
) -> object:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still {value!r} after {timeout} s")
        await asyncio.sleep(interval)
