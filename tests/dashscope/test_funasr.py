from __future__ import annotations

import asyncio

import pytest

from bridge.emulator.server import Emulator
from bridge.emulator.task_server import Timers
from bridge.media.frame import AudioFrame
from bridge.speech.dashscope.asr import MAX_QUEUED_BATCHES, FunASR, RecognitionParams
from bridge.speech.dashscope.errors import TaskFailedError
from bridge.speech.dashscope.settings import DashScopeSettings
from tests.emulator.fakes import FixedASR, ToneTTS, tone

pytestmark = pytest.mark.timeout(30)
KEY = "sk-test-emulator"


async def speak(stream, rate: int, pattern: list[tuple[str, int]]) -> None:
    for kind, ms in pattern:
        frame = tone(rate, 20) if kind == "tone" else AudioFrame.silence(rate, 20)
        for _ in range(ms // 20):
            stream.push(frame)


@pytest.mark.parametrize(
    ("model", "rate"),
    [
        ("fun-asr-realtime", 16000),
        ("paraformer-realtime-v2", 16000),
        ("paraformer-realtime-8k-v2", 8000),
    ],
)
async def test_partials_and_finals(settings: DashScopeSettings, model: str, rate: int) -> None:
    asr = FunASR(settings, RecognitionParams(model=model, max_sentence_silence=800))
    assert asr.sample_rate == rate
    stream = await asr.open_stream("en")
    await speak(stream, rate, [("tone", 600), ("silence", 600), ("tone", 400)])
    await stream.close()
    results = [t async for t in stream.results()]
    finals = [t for t in results if t.is_final]
    assert [t.text for t in finals] == ["hello world", "hello world"]
    assert finals[0].start_ms == 0 and finals[0].end_ms == pytest.approx(600, abs=100)
    assert finals[1].start_ms == pytest.approx(1200, abs=100)
    assert any(not t.is_final for t in results)
    assert stream.metrics.billed_audio_seconds == 2
    assert stream.metrics.audio_seconds == pytest.approx(1.6, abs=0.11)
    assert stream.metrics.first_packet_latency is not None
    await asr.aclose()


async def test_audio_the_socket_has_not_taken_is_bounded_dropping_the_oldest(
    settings: DashScopeSettings,
) -> None:
    asr = FunASR(settings)
    stream = await asr.open_stream("en")
    # Pushed without yielding to the loop, so the sender has taken none of it yet.
    await speak(stream, 16000, [("tone", 100 * MAX_QUEUED_BATCHES), ("silence", 300)])
    assert stream.dropped_batches == 3
    await stream.close()
    finals = [t for t in [t async for t in stream.results()] if t.is_final]
    # The server heard the last MAX_QUEUED_BATCHES batches: tone, then the 300 ms of silence.
    assert [(t.start_ms, t.end_ms) for t in finals] == [(0, 100 * MAX_QUEUED_BATCHES - 300)]
    await asr.aclose()


async def test_keepalive_survives_long_silence() -> None:
    timers = Timers(no_audio=0.6, silent_audio=0.6, heartbeat_every=0.2)
    async with Emulator(FixedASR(), ToneTTS(), api_key=KEY, timers=timers) as emu:
        settings = DashScopeSettings(api_key=KEY, base_url=emu.base_url)
        asr = FunASR(settings, keepalive_after=0.2)
        stream = await asr.open_stream()
        await speak(stream, 16000, [("tone", 400)])
        await asyncio.sleep(1.5)  # caller audio stops (hold): keep-alives fill the gap
        await speak(stream, 16000, [("tone", 400)])
        await stream.close()
        results = [t async for t in stream.results()]
        assert results[-1].is_final
        await asr.aclose()


async def test_without_heartbeat_long_silence_fails() -> None:
    timers = Timers(silent_audio=0.5)
    async with Emulator(FixedASR(), ToneTTS(), api_key=KEY, timers=timers) as emu:
        settings = DashScopeSettings(api_key=KEY, base_url=emu.base_url)
        asr = FunASR(settings, RecognitionParams(heartbeat=False))
        stream = await asr.open_stream()
        await speak(stream, 16000, [("silence", 800)])
        with pytest.raises(TaskFailedError, match="Response timeout"):
            [t async for t in stream.results()]
        await stream.close()
        await asr.aclose()
