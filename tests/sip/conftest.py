"""A bridge with its SIP front door (and HTTP API) on loopback, for whole-call SIP tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from bridge.config import Config, SipConfig
from bridge.server import Bridge, build_app
from bridge.sip.front import SipFront
from bridge.sip.media_workers import EngineFactory
from bridge.speech.factory import SpeechEngines
from tests.conftest import REPO
from tests.sip.sipp import free_port


@dataclass
class SipBridge:
    bridge: Bridge
    front: SipFront
    port: int
    http: str
    records: Path


StartBridge = Callable[..., Awaitable[SipBridge]]


@pytest.fixture
async def sip_bridge(tmp_path: Path, speech_engines: SpeechEngines) -> AsyncIterator[StartBridge]:
    """Start a bridge whose ``sip`` config takes the given overrides (and dialplans from
    ``dialplans``, the repository's by default; media workers build their engines with
    ``make_engines``, by default as configured); stopped after the test."""
    running: list[tuple[SipFront, Bridge, web.AppRunner]] = []

    async def start(
        dialplans: Path = REPO / "dialplans",
        make_engines: EngineFactory | None = None,
        **sip: object,
    ) -> SipBridge:
        config = Config()
        config.dialog.dialplans_dir = str(dialplans)
        config.records.dir = str(tmp_path / "records")
        rtp = free_port() & ~1
        config.sip = SipConfig(port=0, rtp_ports=f"{rtp}-{rtp + 40}", **sip)  # type: ignore[arg-type]
        bridge = Bridge(config)
        await bridge.warm_prompts(speech_engines)
        bridge.engines = speech_engines
        front = SipFront(bridge, config.sip, make_engines=make_engines)
        port = await front.start()
        runner = web.AppRunner(build_app(bridge, front), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        running.append((front, bridge, runner))
        return SipBridge(bridge, front, port, f"http://127.0.0.1:{http_port}", tmp_path / "records")

    yield start
    for front, bridge, runner in running:
        await front.close()
        await bridge.shutdown()
        await runner.cleanup()
