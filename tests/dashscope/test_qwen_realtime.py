from __future__ import annotations

import pytest

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.speech.base import text_once
from bridge.speech.dashscope.errors import (
    AuthError,
    ConnectionLostError,
    RateLimitError,
    TaskFailedError,
)
from bridge.speech.dashscope.qwen_asr import QwenASR, QwenASRParams
from bridge.speech.dashscope.qwen_tts import QwenTTS, QwenTTSParams
from bridge.speech.dashscope.settings import DashScopeSettings
from tests.dashscope.test_funasr import speak

pytestmark = pytest.mark.timeout(30)
TEXT = "Hello there. How are you today?"


@pytest.mark.parametrize("mode", ["server_commit", "commit"])
@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_qwen_tts(settings: DashScopeSettings, mode: str, rate: int) -> None:
    params = QwenTTSParams(
        mode=mode, sample_rate=rate, language_type="English", instructions="calm"
    )
    tts = QwenTTS(settings, params)
    chunks = [c async for c in tts.synthesize(text_once(TEXT))]
    assert [c.text for c in chunks if c.text] == ["Hello there.", "How are you today?"]
    assert {c.audio.sample_rate for c in chunks} == {rate}
    assert tts.last_metrics.billed_characters == len("Hello there.How are you today?")
    assert tts.last_metrics.first_packet_latency is not None


@pytest.mark.parametrize("vad", [True, False])
async def test_qwen_asr(settings: DashScopeSettings, vad: bool) -> None:
    asr = QwenASR(settings, QwenASRParams(vad=vad, corpus="greetings"))
    stream = await asr.open_stream("en")
    await speak(stream, 16000, [("tone", 600), ("silence", 600), ("tone", 400)])
    await stream.close()
    results = [t async for t in stream.results()]
    finals = [t.text for t in results if t.is_final]
    assert finals == (["hello world", "hello world"] if vad else ["hello world hello world"])
    assert any(not t.is_final for t in results)
    if vad:
        assert [t.start_ms for t in results if t.is_final][1] >= 1000


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (Faults(fail_after_frames=2), TaskFailedError),
        (Faults(fail_after_frames=2, error_code="Throttling.RateQuota"), RateLimitError),
        (Faults(drop_after_frames=2), ConnectionLostError),
        (Faults(handshake_status=401), AuthError),
        (Faults(handshake_status=429), RateLimitError),
    ],
)
async def test_qwen_faults(emulator: Emulator, settings: DashScopeSettings, faults, error) -> None:
    emulator.faults = faults
    with pytest.raises(error):
        [c async for c in QwenTTS(settings).synthesize(text_once(TEXT))]
    emulator.faults = Faults(**faults.to_json())
    with pytest.raises(error):
        stream = await QwenASR(settings).open_stream()
        await speak(stream, 16000, [("tone", 600)])
        await stream.close()
        [t async for t in stream.results()]


async def test_qwen_tts_slow_audio(emulator: Emulator, settings: DashScopeSettings) -> None:
    emulator.faults = Faults(rtf=1.5, first_packet_delay=0.2)
    tts = QwenTTS(settings)
    [c async for c in tts.synthesize(text_once(TEXT))]
    assert tts.last_metrics.first_packet_latency >= 0.2
    assert tts.last_metrics.rtf >= 1.3
