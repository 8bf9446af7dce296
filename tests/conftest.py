"""Fixtures shared across the suite: speech engines loaded once, a running bridge, test speech."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from bridge.config import Config
from bridge.media.resample import Resampler
from bridge.server import Bridge, build_app
from bridge.speech.factory import SpeechEngines, build_engines
from bridge.webrtc.ice import use_ice_host_addresses

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def speech_engines() -> SpeechEngines:
    """The embedded engines, loaded once for the whole run (as the server does per process)."""
    return asyncio.run(build_engines(Config().speech))


@pytest.fixture(scope="session")
def speak(speech_engines: SpeechEngines) -> Callable[[str, int], np.ndarray]:
    """Caller speech for tests: Piper audio of ``text`` at ``rate``, with a little lead-in."""
    voice = speech_engines.tts._runtime.piper()  # type: ignore[attr-defined]
    cache: dict[tuple[str, int], np.ndarray] = {}

    def synthesise(text: str, rate: int) -> np.ndarray:
        if (text, rate) not in cache:
            pcm = np.concatenate([c.audio_int16_array for c in voice.synthesize(text)])
            resampler = Resampler(voice.config.sample_rate, rate)
            audio = np.concatenate([resampler.process(pcm), resampler.flush()])
            cache[(text, rate)] = audio.astype(np.int16)
        return cache[(text, rate)]

    return synthesise


@pytest.fixture(scope="session")
def transcribe(speech_engines: SpeechEngines) -> Callable[[np.ndarray, int], str]:
    """What a listener would make of some audio, by the embedded recogniser (whole-file)."""
    model = speech_engines.asr.runtime.whisper()  # type: ignore[attr-defined]

    def run(samples: np.ndarray, rate: int) -> str:
        resampler = Resampler(rate, 16000)
        audio = np.concatenate([resampler.process(samples.astype(np.int16)), resampler.flush()])
        segments, _ = model.transcribe(
            audio.astype(np.float32) / 32768, language="en", beam_size=1, vad_filter=True
        )
        return " ".join(segment.text.strip() for segment in segments)

    return run


def loopback_config(tmp_path: Path) -> Config:
    """The repository's dialplans, records under ``tmp_path``, WebRTC on loopback only."""
    config = Config()
    config.dialog.dialplans_dir = str(REPO / "dialplans")
    config.records.dir = str(tmp_path / "records")
    config.webrtc.ice_hosts = ["127.0.0.1"]
    return config


@contextlib.asynccontextmanager
async def running_bridge(
    config: Config, engines: SpeechEngines
) -> AsyncIterator[tuple[str, Bridge]]:
    """A bridge serving HTTP/WebRTC on an ephemeral loopback port with ``engines``."""
    use_ice_host_addresses(config.webrtc.ice_hosts)
    bridge = Bridge(config)
    await bridge.warm_prompts(engines)
    bridge.engines = engines
    runner = web.AppRunner(build_app(bridge), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", bridge
    finally:
        await bridge.shutdown()
        await runner.cleanup()
        use_ice_host_addresses([])


@pytest.fixture
async def bridge_server(
    tmp_path: Path, speech_engines: SpeechEngines
) -> AsyncIterator[tuple[str, Bridge]]:
    """A bridge serving HTTP/WebRTC on an ephemeral loopback port, records under tmp_path."""
    async with running_bridge(loopback_config(tmp_path), speech_engines) as served:
        yield served
