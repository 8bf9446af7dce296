from __future__ import annotations

import asyncio
import time

import pytest

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.speech.base import text_once
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.tts import CosyVoiceParams, CosyVoiceTTS, split_for_limit
from tests.emulator.fakes import MS_PER_CHAR, ToneTTS

pytestmark = pytest.mark.timeout(30)


async def tokens(*parts: str, delay: float = 0.0):
    for part in parts:
        await asyncio.sleep(delay)
        yield part


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 48000])
async def test_streams_pcm_at_requested_rate(settings: DashScopeSettings, rate: int) -> None:
    tts = CosyVoiceTTS(settings, CosyVoiceParams(sample_rate=rate))
    chunks = [c async for c in tts.synthesize(tokens("Hello there. How ", "are you?"))]
    await tts.aclose()
    assert {c.audio.sample_rate for c in chunks} == {rate}
    assert [c.text for c in chunks if c.text] == ["Hello there.", "How are you?"]
    seconds = sum(c.audio.duration for c in chunks)
    expected = MS_PER_CHAR * (len("Hello there.") + 1 + len("How are you?") + 2) / 1000
    assert seconds == pytest.approx(expected, rel=0.05)
    ts = [c.audio.timestamp for c in chunks]
    assert ts == sorted(ts) and ts[0] == 0
    metrics = tts.last_metrics
    assert metrics.billed_characters == len("Hello there.How are you?")
    assert metrics.first_packet_latency is not None and metrics.rtf is not None


async def test_word_marks(settings: DashScopeSettings) -> None:
    tts = CosyVoiceTTS(settings, CosyVoiceParams(word_timestamps=True))
    chunks = [c async for c in tts.synthesize(text_once("one two three."))]
    await tts.aclose()
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == ["one", "two", "three."]
    assert [w.end_ms for w in words] == sorted(w.end_ms for w in words)


async def test_connection_is_reused_with_new_task_ids(
    emulator: Emulator, settings: DashScopeSettings
) -> None:
    tts = CosyVoiceTTS(settings, pool_size=1)
    await tts.pool.warm()
    for _ in range(3):
        assert [c async for c in tts.synthesize(text_once("Hi."))]
    await asyncio.sleep(0.05)
    assert len(tts.pool._idle) == 1
    assert tts.pool._idle[0].protocol.tasks_run == 3
    await tts.aclose()


async def test_barge_in_before_finish_task_cancels_and_reuses_the_socket(
    settings: DashScopeSettings,
) -> None:
    async def slow_text():
        yield "A long sentence with many many words in it. " * 5
        await asyncio.sleep(10)  # the rest is not in yet: no finish-task sent
        yield "End."

    tts = CosyVoiceTTS(settings, pool_size=1)
    stream = tts.synthesize(slow_text())
    first = await anext(stream)
    assert first.audio.num_samples > 0
    await stream.aclose()
    await asyncio.gather(*tts._background)
    (conn,) = tts.pool._idle
    assert [c async for c in tts.synthesize(text_once("Next."))]
    assert conn.protocol.tasks_run == 2  # the cancelled task's socket spoke the next turn
    await tts.aclose()


async def test_barge_in_after_finish_task_closes_the_socket_at_once(
    emulator: Emulator, settings: DashScopeSettings
) -> None:
    """With finish-task out, the service would generate the whole turn: only closing stops it."""
    emulator.faults = Faults(rtf=1.0)  # real-time pacing: still generating at the barge-in
    tts = CosyVoiceTTS(settings, pool_size=1)
    stream = tts.synthesize(text_once("A long sentence with many many words in it. " * 5))
    assert (await anext(stream)).audio.num_samples > 0
    cancelled_at = time.monotonic()
    await stream.aclose()
    while emulator.last_disconnect < cancelled_at:
        await asyncio.sleep(0.005)
    assert emulator.last_disconnect - cancelled_at < 0.1
    await asyncio.gather(*tts._background)
    assert all(c.protocol.tasks_run == 0 for c in tts.pool._idle)  # not pooled: a fresh one
    assert [c async for c in tts.synthesize(text_once("Next."))]
    await tts.aclose()


async def test_text_gap_rolls_over_to_a_new_task(settings: DashScopeSettings) -> None:
    tts = CosyVoiceTTS(settings, text_gap_limit=0.2)
    chunks = [c async for c in tts.synthesize(tokens("First. ", "Second.", delay=0.4))]
    await tts.aclose()
    assert [c.text for c in chunks if c.text] == ["First.", "Second."]
    assert tts.last_metrics.tasks == 2


async def test_ssml_is_sent_whole(emulator: Emulator, settings: DashScopeSettings) -> None:
    tts = CosyVoiceTTS(settings)
    ssml = '<speak>Hello <break time="200ms"/> world. Bye.</speak>'
    chunks = [c async for c in tts.synthesize(tokens(ssml[:10], ssml[10:]))]
    await tts.aclose()
    assert chunks
    assert isinstance(emulator.tts, ToneTTS)
    assert emulator.tts.texts == ["Hello world. Bye."]


def test_split_for_limit() -> None:
    assert split_for_limit("short") == ["short"]
    parts = split_for_limit("word " * 1000, limit=100)
    assert all(len(p) <= 100 for p in parts) and "".join(parts) == "word " * 1000
    assert all(len(p) <= 50 for p in split_for_limit("字" * 500, limit=100))


async def test_next_task_is_started_ahead(settings: DashScopeSettings) -> None:
    tts = CosyVoiceTTS(settings, pool_size=1, start_ahead=True)
    assert [c async for c in tts.synthesize(text_once("Hi."))]
    await asyncio.gather(*tts._background)
    (conn,) = tts._started
    assert [c async for c in tts.synthesize(text_once("Again."))]
    assert conn.protocol.tasks_run == 2  # the second turn ran on the task started ahead
    await tts.aclose()


async def test_unused_task_started_ahead_is_replaced(settings: DashScopeSettings) -> None:
    """Cancelled before the server's text-gap limit and started afresh: the socket stays warm."""
    tts = CosyVoiceTTS(settings, pool_size=1, text_gap_limit=0.1, start_ahead=True)
    await tts.warm()
    (first,) = tts._started
    await asyncio.sleep(0.25)
    await asyncio.gather(*tts._background)
    (conn,) = tts._started
    assert conn is first and conn.protocol.tasks_run >= 2 and tts.ready_sockets == 1
    assert [c async for c in tts.synthesize(text_once("Still fine."))]
    await tts.aclose()
