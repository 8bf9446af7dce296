"""Retry once, then fall back to the embedded engine, across emulator faults."""

from __future__ import annotations

import asyncio

import pytest

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.speech.base import text_once
from bridge.speech.dashscope.asr import FunASR
from bridge.speech.dashscope.errors import AuthError, ConnectionLostError, TaskFailedError
from bridge.speech.dashscope.fallback import FallbackASR, FallbackTTS
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.tts import CosyVoiceParams, CosyVoiceTTS
from tests.dashscope.test_funasr import speak
from tests.emulator.fakes import FixedASR, ToneTTS

pytestmark = pytest.mark.timeout(30)
TEXT = "First sentence here. Second one follows. And a third."


class LocalTone(ToneTTS):
    sample_rate = 22050  # like Piper: the wrapper must resample to the primary's rate


@pytest.mark.parametrize(
    ("faults", "attempts", "used_fallback"),
    [
        (Faults(), 0, False),
        # The first sentence takes 6 frames of <= 100 ms: these break into the second one.
        (Faults(fail_after_frames=8), 2, True),
        (Faults(drop_after_frames=8), 2, True),
        (Faults(handshake_status=401), 1, True),  # not retried: the key will not get better
        (Faults(handshake_status=429, handshake_failures=1), 0, False),  # back-off absorbs it
    ],
)
async def test_tts_keeps_talking(
    emulator: Emulator, settings: DashScopeSettings, faults, attempts, used_fallback
) -> None:
    emulator.faults = faults
    primary = CosyVoiceTTS(settings, CosyVoiceParams(sample_rate=8000))
    local = LocalTone()
    tts = FallbackTTS(primary, local)
    chunks = [c async for c in tts.synthesize(text_once(TEXT))]
    await primary.aclose()
    assert len(tts.failures) == attempts
    assert {c.audio.sample_rate for c in chunks} == {8000}
    spoken = [c.text for c in chunks if c.text]
    assert spoken[-1] in ("And a third.", "third.")
    assert bool(local.texts) == used_fallback
    if attempts == 2:  # mid-turn: finished sentences are not repeated by the fallback
        assert "First sentence here." not in " ".join(local.texts)
    ts = [c.audio.timestamp for c in chunks]
    assert ts == sorted(ts)


async def test_tts_gives_up_when_everything_fails(emulator: Emulator, settings) -> None:
    emulator.faults = Faults(handshake_status=401)
    tts = FallbackTTS(CosyVoiceTTS(settings), CosyVoiceTTS(settings))
    with pytest.raises(AuthError):
        [c async for c in tts.synthesize(text_once(TEXT))]


@pytest.mark.parametrize(
    ("faults", "text", "failures"),
    [
        (Faults(), "hello world", 0),
        (Faults(fail_after_frames=3), "local words", 2),
        (Faults(drop_after_frames=3), "local words", 2),
        (Faults(handshake_status=403), "local words", 1),
    ],
)
async def test_asr_keeps_listening(
    emulator: Emulator, settings: DashScopeSettings, faults, text, failures
) -> None:
    emulator.faults = faults
    primary = FunASR(settings)
    asr = FallbackASR(primary, FixedASR("local words"))
    stream = await asr.open_stream()
    collected = []

    async def read() -> None:
        async for t in stream.results():
            collected.append(t)

    reader = asyncio.create_task(read())
    await speak(stream, 16000, [("tone", 600), ("silence", 500)])
    await asyncio.sleep(0.1)
    await stream.close()
    await reader
    await primary.aclose()
    assert [t.text for t in collected if t.is_final] == [text]
    assert len(asr.failures) == failures
    assert all(
        isinstance(e, TaskFailedError | ConnectionLostError | AuthError) for e in asr.failures
    )
