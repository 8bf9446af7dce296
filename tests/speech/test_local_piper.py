from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from bridge.speech.base import SpeechChunk, SpeechError, text_once
from bridge.speech.local.piper import PiperTTS, PromptCache, SentenceSplitter
from bridge.speech.local.runtime import LocalRuntime, get_runtime

LONG_TEXT = " ".join(
    f"This is sentence number {n} of a long answer that nobody will hear." for n in range(1, 13)
)


@pytest.fixture(scope="session")
def runtime() -> LocalRuntime:
    """The process-wide runtime with Piper loaded once for every test."""
    rt = get_runtime()
    rt.piper()
    return rt


@pytest.fixture
def tts(runtime: LocalRuntime) -> PiperTTS:
    return PiperTTS(runtime)  # a fresh prompt cache per test


async def trickle(*pieces: tuple[float, str]) -> AsyncIterator[str]:
    """Text arriving in pieces after the given pauses, like LLM tokens."""
    for pause, piece in pieces:
        await asyncio.sleep(pause)
        yield piece


async def collect(chunks: AsyncIterator[SpeechChunk]) -> list[SpeechChunk]:
    return [chunk async for chunk in chunks]


# Sentence splitting (no model).


def test_splitter_keeps_incomplete_tail_until_more_text() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello the") == []
    assert splitter.feed("re. How a") == ["Hello there."]
    assert splitter.feed("re you?") == []  # "?" might still be followed by more punctuation
    assert splitter.feed(" Fine") == ["How are you?"]
    assert splitter.flush() == ["Fine"]
    assert splitter.flush() == []


def test_splitter_respects_abbreviations_decimals_and_line_breaks() -> None:
    splitter = SentenceSplitter()
    text = "Dr. Smith sees you at 3.5 p.m. on Monday! Bring your card.\nThen wait "
    assert splitter.feed(text) == [
        "Dr. Smith sees you at 3.5 p.m. on Monday!",
        "Bring your card.",
    ]
    assert splitter.flush() == ["Then wait"]


def test_splitter_cuts_run_on_text_at_a_comma_and_drops_unspeakable_pieces() -> None:
    splitter = SentenceSplitter(max_chars=45)
    pieces = splitter.feed("First we check the line, then the router, then the cable and the box")
    assert pieces == ["First we check the line, then the router,"]
    assert splitter.feed("... ") == ["then the cable and the box..."]
    assert splitter.flush() == []
    assert SentenceSplitter().feed("... !? \n") == []


# Prompt cache (no model).


def test_prompt_cache_is_lru_bounded_by_bytes() -> None:
    cache = PromptCache(max_bytes=3000)
    for name in "abc":
        cache.put(("v", name), (np.zeros(500, np.int16),))  # 1000 bytes each
    assert cache.get(("v", "a")) is not None  # now most recent: "b" is the oldest
    cache.put(("v", "d"), (np.zeros(500, np.int16),))
    assert cache.get(("v", "b")) is None
    assert cache.get(("v", "c")) is not None
    assert (cache.hits, cache.misses, len(cache), cache.bytes) == (2, 1, 3, 3000)
    cache.put(("v", "huge"), (np.zeros(5000, np.int16),))
    assert cache.get(("v", "huge")) is None
    assert len(cache) == 3


# Synthesis (loads the voice).


@pytest.mark.slow
async def test_synthesises_sentence_by_sentence_with_contiguous_timestamps(tts: PiperTTS) -> None:
    chunks = await collect(tts.synthesize(text_once("Hello there. What are your opening hours?")))
    assert [c.text for c in chunks if c.text] == ["Hello there.", "What are your opening hours?"]
    timestamp = 0
    for chunk in chunks:
        assert chunk.audio.sample_rate == tts.sample_rate == 22050
        assert chunk.audio.timestamp == timestamp
        assert chunk.words == ()  # this voice gives no alignments: the playout estimates
        timestamp = chunk.audio.end_timestamp
    audio = np.concatenate([c.audio.samples for c in chunks])
    assert 1.5 < len(audio) / 22050 < 6
    assert np.abs(audio).max() > 5000


@pytest.mark.slow
async def test_streamed_text_split_mid_sentence_is_spoken_before_the_text_ends(
    tts: PiperTTS,
) -> None:
    text = trickle(
        (0.1, "Good morn"),
        (0.1, "ing, thanks for cal"),
        (0.1, "ling. Our opening ho"),  # the first sentence is complete after 0.3 s
        (1.5, "urs are nine to five."),  # the text ends after 1.8 s
    )
    started = time.perf_counter()
    first_chunk_at = None
    texts = []
    async for chunk in tts.synthesize(text):
        first_chunk_at = first_chunk_at or time.perf_counter() - started
        texts.append(chunk.text)
    assert first_chunk_at is not None and first_chunk_at < 1.5
    assert [t for t in texts if t] == [
        "Good morning, thanks for calling.",
        "Our opening hours are nine to five.",
    ]


@pytest.mark.slow
async def test_prompt_cache_makes_a_repeated_prompt_free(tts: PiperTTS) -> None:
    prompt = "Please hold while I transfer you."
    first = await collect(tts.synthesize(text_once(prompt)))
    assert (tts.cache.hits, tts.cache.misses) == (0, 1)
    started = time.perf_counter()
    second = await collect(tts.synthesize(text_once("  Please hold while I  transfer you. ")))
    assert time.perf_counter() - started < 0.05
    assert (tts.cache.hits, tts.cache.misses) == (1, 1)
    assert [c.text for c in second] == [c.text for c in first]
    assert all(
        np.array_equal(a.audio.samples, b.audio.samples) for a, b in zip(first, second, strict=True)
    )


def count_syntheses(tts: PiperTTS, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    synthesize = tts._synthesize

    def counting(sentence: str) -> tuple[np.ndarray, ...]:
        started.append(sentence)
        return synthesize(sentence)

    monkeypatch.setattr(tts, "_synthesize", counting)
    return started


@pytest.mark.slow
async def test_aclose_stops_at_once_and_skips_unstarted_sentences(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = count_syntheses(tts, monkeypatch)
    speech = tts.synthesize(text_once(LONG_TEXT))
    first = await anext(speech)
    assert first.text.startswith("This is sentence number 1 ")
    began = time.perf_counter()
    await speech.aclose()
    assert time.perf_counter() - began < 0.05
    await asyncio.sleep(0.5)  # anything still queued would have run by now
    assert len(started) <= 3  # the one played, and the lookahead the single TTS worker began


@pytest.mark.slow
async def test_cancelling_the_consumer_task_stops_at_once(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = count_syntheses(tts, monkeypatch)
    first_chunk = asyncio.Event()

    async def play() -> None:
        async for _ in tts.synthesize(text_once(LONG_TEXT)):
            first_chunk.set()
            await asyncio.sleep(10)  # "playing" the chunk when barge-in comes

    task = asyncio.create_task(play())
    await first_chunk.wait()
    began = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - began < 0.05
    await asyncio.sleep(0.5)
    assert len(started) <= 3


@pytest.mark.slow
async def test_errors_surface_as_speech_errors(tts: PiperTTS) -> None:
    with pytest.raises(SpeechError, match="unknown Piper voice"):
        tts.synthesize(text_once("Hi."), voice="nobody")

    async def broken() -> AsyncIterator[str]:
        yield "Hello there. "
        raise ConnectionError("LLM went away")

    chunks: list[SpeechChunk] = []
    with pytest.raises(SpeechError, match="LLM went away"):
        async for chunk in tts.synthesize(broken(), voice=tts.voice):
            chunks.append(chunk)
    assert chunks[0].text == "Hello there."
