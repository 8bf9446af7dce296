"""Each emulator fault knob produces the documented client behaviour."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from websockets.asyncio.client import connect

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.speech.base import text_once
from bridge.speech.dashscope.asr import FunASR
from bridge.speech.dashscope.errors import (
    AuthError,
    ConnectionLostError,
    ProtocolError,
    RateLimitError,
    TaskFailedError,
)
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.transport import closed_error
from bridge.speech.dashscope.tts import CosyVoiceTTS
from tests.dashscope.test_funasr import speak
from tests.emulator.conftest import KEY

pytestmark = pytest.mark.timeout(30)
TEXT = "First sentence here. Second one follows. And a third."


async def tts_run(settings: DashScopeSettings) -> CosyVoiceTTS:
    tts = CosyVoiceTTS(settings)
    try:
        async for _ in tts.synthesize(text_once(TEXT)):
            pass
    finally:
        await tts.aclose()
    return tts


async def asr_run(settings: DashScopeSettings) -> None:
    asr = FunASR(settings)
    try:
        stream = await asr.open_stream()
        await speak(stream, 16000, [("tone", 600), ("silence", 200)])
        await stream.close()
        [t async for t in stream.results()]
    finally:
        await asr.aclose()


@pytest.mark.parametrize("run", [tts_run, asr_run], ids=["tts", "asr"])
@pytest.mark.parametrize(
    ("faults", "error", "match"),
    [
        (Faults(fail_after_frames=3), TaskFailedError, "InternalError: emulated failure"),
        (Faults(fail_after_frames=2, error_code="Throttling"), RateLimitError, "Throttling"),
        (Faults(drop_after_frames=3), ConnectionLostError, "closed"),
        (Faults(handshake_status=401), AuthError, "key/region mismatch"),
        (Faults(handshake_status=403), AuthError, "key/region mismatch"),
        (Faults(handshake_status=429), RateLimitError, "429"),
    ],
)
async def test_fault_maps_to_error(
    emulator: Emulator, settings: DashScopeSettings, run, faults, error, match
) -> None:
    emulator.faults = faults
    with pytest.raises(error, match=match):
        await run(settings)


async def test_429_backs_off_then_succeeds(emulator: Emulator, settings: DashScopeSettings):
    emulator.faults = Faults(handshake_status=429, handshake_failures=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await tts_run(settings)
    assert loop.time() - started >= 0.05 + 0.1  # two back-off delays


async def test_wrong_key_is_refused_at_handshake(settings: DashScopeSettings) -> None:
    bad = DashScopeSettings(api_key="sk-wrong", base_url=settings.base_url)
    with pytest.raises(AuthError, match="HTTP 401"):
        await tts_run(bad)


async def test_first_packet_delay(emulator: Emulator, settings: DashScopeSettings) -> None:
    emulator.faults = Faults(first_packet_delay=0.3)
    tts = await tts_run(settings)
    assert tts.last_metrics.first_packet_latency >= 0.3


async def test_slow_audio_shows_in_rtf(emulator: Emulator, settings: DashScopeSettings) -> None:
    emulator.faults = Faults(rtf=1.5)
    tts = await tts_run(settings)
    assert tts.last_metrics.rtf >= 1.3


async def test_failed_socket_is_not_reused(emulator: Emulator, settings: DashScopeSettings):
    emulator.faults = Faults(fail_after_frames=1)
    tts = CosyVoiceTTS(settings, pool_size=1)
    with pytest.raises(TaskFailedError):
        async for _ in tts.synthesize(text_once(TEXT)):
            pass
    await asyncio.gather(*tts._background)
    assert all(c.usable for c in tts.pool._idle)
    emulator.faults = Faults()
    assert [c async for c in tts.synthesize(text_once("Fine again."))]
    await tts.aclose()


async def test_malformed_run_task_is_close_1007(emulator: Emulator) -> None:
    headers = {"Authorization": f"bearer {KEY}"}
    async with connect(emulator.inference_url + "/", additional_headers=headers) as ws:
        await ws.send(json.dumps({"header": {"action": "run-task", "task_id": "x"}}))
        with pytest.raises(Exception) as caught:
            await ws.recv()
    error = closed_error(caught.value)
    assert isinstance(error, ProtocolError) and "1007" in str(error)


async def test_control_endpoint(emulator: Emulator) -> None:
    url = f"http://127.0.0.1:{emulator.port}/emulator/faults"
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"fail_after_frames": 5}) as response:
            assert response.status == 401
        async with http.post(url, json={"fail_after_frame": 5}, headers=auth) as response:
            assert response.status == 400
        async with http.post(url, json={"rtf": 2.0, "first_packet_delay": 0.1}, headers=auth) as r:
            assert r.status == 200 and (await r.json())["rtf"] == 2.0
        async with http.get(url, headers=auth) as response:
            assert (await response.json())["first_packet_delay"] == 0.1
    assert emulator.faults == Faults(rtf=2.0, first_packet_delay=0.1)
