from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time

import numpy as np
import pytest

from bridge.media.frame import AudioFrame
from bridge.media.g711 import ulaw_decode, ulaw_encode
from bridge.media.resample import Resampler
from bridge.speech.base import SpeechError, Transcript, text_once
from bridge.speech.local.piper import PiperTTS
from bridge.speech.local.runtime import LocalRuntime, get_runtime
from bridge.speech.local.whisper import (
    Recognition,
    WhisperASR,
    WhisperSettings,
    WhisperStream,
    clean_text,
)

RATE = 16000
FRAME = RATE // 50  # 20 ms
QUESTION = "What are your opening hours?"
NO_PARTIALS = WhisperSettings(partial_interval_ms=60_000)


@pytest.fixture(scope="session")
def runtime() -> LocalRuntime:
    """The process-wide runtime with both models loaded once for every test."""
    rt = get_runtime()
    rt.whisper()
    rt.piper()
    return rt


@pytest.fixture(scope="session")
def asr(runtime: LocalRuntime) -> WhisperASR:
    return WhisperASR(runtime)


@pytest.fixture(scope="session")
def tts(runtime: LocalRuntime) -> PiperTTS:
    return PiperTTS(runtime)


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    resampler = Resampler(in_rate, out_rate)
    return np.concatenate([resampler.process(audio), resampler.flush()])


async def say(tts: PiperTTS, text: str, *, phone: bool = False) -> np.ndarray:
    """The caller's speech at 16 kHz, optionally squeezed through an 8 kHz µ-law line first."""
    audio = np.concatenate([c.audio.samples async for c in tts.synthesize(text_once(text))])
    if phone:
        line = ulaw_decode(ulaw_encode(resample(audio, tts.sample_rate, 8000)))
        return resample(line, 8000, RATE)
    return resample(audio, tts.sample_rate, RATE)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.int16)


def noise(ms: int, level: float, seed: int = 1) -> np.ndarray:
    samples = np.random.default_rng(seed).normal(0, level, RATE * ms // 1000)
    return np.clip(samples, -32768, 32767).astype(np.int16)


async def feed(stream: WhisperStream, audio: np.ndarray, *, realtime: bool = False) -> None:
    """Push 20 ms frames in real time, or at about 5x (the VAD keeps up, nothing is dropped)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for index, start in enumerate(range(0, len(audio), FRAME)):
        stream.push(AudioFrame(audio[start : start + FRAME], RATE))
        due = began + (index + 1) * 0.02 if realtime else 0
        await asyncio.sleep(max(0.004, due - loop.time()))


async def timed_results(stream: WhisperStream) -> list[tuple[float, Transcript]]:
    return [(time.perf_counter(), t) async for t in stream.results()]


async def recognise(asr: WhisperASR, audio: np.ndarray) -> list[Transcript]:
    stream = await asr.open_stream()
    reader = asyncio.create_task(timed_results(stream))
    await feed(stream, audio)
    await stream.close()
    assert stream.dropped_ms == 0
    return [transcript for _, transcript in await reader]


async def first_finals(stream: WhisperStream, count: int) -> list[Transcript]:
    found: list[Transcript] = []
    async for transcript in stream.results():
        if transcript.is_final:
            found.append(transcript)
            if len(found) == count:
                break
    return found


def spy_decodes(asr: WhisperASR, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the length of every utterance the stream decodes."""
    lengths: list[int] = []
    transcribe = asr.transcribe

    async def spy(
        samples: np.ndarray, language: str = "en", *, partial: bool = False
    ) -> Recognition:
        lengths.append(len(samples))
        return await transcribe(samples, language, partial=partial)

    monkeypatch.setattr(asr, "transcribe", spy)
    return lengths


def words(result: Transcript | Recognition) -> list[str]:
    return [w.strip(".,?!").lower() for w in result.text.split()]


def finals(results: list[Transcript]) -> list[Transcript]:
    return [t for t in results if t.is_final]


# Filtering of what Whisper invents on non-speech (no model).


@pytest.mark.parametrize(
    ("text", "no_speech", "logprob", "kept"),
    [
        (" What are your opening hours?", 0.02, -0.1, "What are your opening hours?"),
        (" Thank you.", 0.45, -0.4, ""),  # the classic hallucination on noise
        (" Thank you.", 0.05, -0.2, "Thank you."),  # ...but callers do say it
        (" you", 0.95, -0.8, ""),
        (" I'm gonna go to the right side of the car.", 0.91, -2.0, ""),
        (" [BLANK_AUDIO]", 0.1, -0.3, ""),
        (" .", 0.95, -1.2, ""),
        ("(coughs) Yes, please. ♪", 0.1, -0.3, "Yes, please."),
        (" Call (555) 123-4567.", 0.05, -0.2, "Call (555) 123-4567."),
        (" Is it open? Is it open? Is it", 0.05, -0.2, "Is it open?"),  # short-window loop
        (" No, no, no. Not that one.", 0.05, -0.2, "No, no, no. Not that one."),
    ],
)
def test_clean_text_drops_non_speech(
    text: str, no_speech: float, logprob: float, kept: str
) -> None:
    assert clean_text(text, no_speech, logprob, WhisperSettings()) == kept


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="endpoint_ms"):
        WhisperSettings(speculate_after_ms=600, endpoint_ms=500)
    with pytest.raises(ValueError, match="window"):
        WhisperSettings(max_utterance_ms=30_000)


# Recognition (loads the models).


@pytest.mark.slow
@pytest.mark.parametrize("phone", [False, True], ids=["16k", "8k-ulaw"])
async def test_round_trip_recognises_the_words(
    runtime: LocalRuntime, tts: PiperTTS, phone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = WhisperASR(runtime, NO_PARTIALS)
    decodes = spy_decodes(asr, monkeypatch)
    speech = await say(tts, QUESTION, phone=phone)
    results = await recognise(asr, np.concatenate([silence(500), speech, silence(1000)]))
    assert len(results) == 1 and results[0].is_final
    final = results[0]
    assert {"opening", "hours"} <= set(words(final))
    speech_ms = len(speech) * 1000 // RATE
    assert 300 <= final.start_ms <= 700
    assert 500 + speech_ms - 300 <= final.end_ms <= 500 + speech_ms + 300
    assert final.confidence is not None and 0.3 < final.confidence <= 1
    assert len(decodes) == 1  # the speculative decode was the final one


@pytest.mark.slow
async def test_partials_come_before_the_final_of_a_long_utterance(
    asr: WhisperASR, tts: PiperTTS
) -> None:
    speech = await say(tts, "I would like to book a table for four people on Saturday evening.")
    lead = silence(300)
    stream = await asr.open_stream()
    reader = asyncio.create_task(timed_results(stream))
    began = time.perf_counter()
    await feed(stream, np.concatenate([lead, speech, silence(1200)]), realtime=True)
    speech_end = began + (len(lead) + len(speech)) / RATE
    await stream.close()
    results = await reader
    assert results[-1][1].is_final and len(finals([t for _, t in results])) == 1
    partials = [t for _, t in results if not t.is_final]
    assert len(partials) >= 2
    ends = [p.end_ms for p in partials]
    assert ends == sorted(ends)
    assert all(b - a >= asr.settings.partial_interval_ms for a, b in itertools.pairwise(ends))
    final_at, final = results[-1]
    assert {"book", "table", "saturday"} <= set(words(final))
    # Endpointing waits 500 ms of silence; the final decode ran during that wait.
    assert final_at - speech_end < 1.5


@pytest.mark.slow
async def test_two_utterances_separated_by_silence_give_two_finals(
    asr: WhisperASR, tts: PiperTTS
) -> None:
    first = await say(tts, QUESTION, phone=True)
    second = await say(tts, "Can I book a table for tomorrow?", phone=True)
    stream = await asr.open_stream()
    await feed(stream, np.concatenate([silence(300), first, silence(1500), second, silence(800)]))
    results = await asyncio.wait_for(first_finals(stream, 2), 10)  # endpointed, not flushed
    await stream.close()
    assert {"opening", "hours"} <= set(words(results[0]))
    assert {"table", "tomorrow"} <= set(words(results[1]))  # "book" is sometimes "both"
    assert results[0].end_ms < results[1].start_ms


@pytest.mark.slow
async def test_a_short_pause_keeps_one_utterance_and_discards_the_speculative_decode(
    runtime: LocalRuntime, tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = WhisperASR(runtime, NO_PARTIALS)
    decoded = spy_decodes(asr, monkeypatch)
    # Piper pads sentences with ~0.1 s of silence, so the caller pauses for ~0.3 s: longer than
    # speculate_after_ms, shorter than endpoint_ms.
    audio = [silence(300), await say(tts, "Hello there."), silence(100), await say(tts, QUESTION)]
    results = await recognise(asr, np.concatenate([*audio, silence(900)]))
    assert len(results) == 1
    assert {"hello", "opening", "hours"} <= set(words(results[0]))
    assert len(decoded) == 2  # one speculative decode in the pause, thrown away
    assert decoded[0] < decoded[1]


@pytest.mark.slow
async def test_a_final_decode_never_waits_for_a_partial(asr: WhisperASR, tts: PiperTTS) -> None:
    speech = await say(tts, QUESTION)
    release = threading.Event()
    partial = asyncio.ensure_future(asr.runtime.partial_pool.run(release.wait))
    try:
        final = await asyncio.wait_for(asr.transcribe(speech), 60)
        assert not partial.done()
    finally:
        release.set()
        await partial
    assert {"opening", "hours"} <= set(words(final))


@pytest.mark.slow
async def test_partials_decode_at_a_lower_priority(asr: WhisperASR, tts: PiperTTS) -> None:
    runtime = asr.runtime
    speech = await say(tts, QUESTION)
    assert {"opening", "hours"} <= set(words(await asr.transcribe(speech, partial=True)))
    nice = runtime.config.partial_nice
    assert nice > 0
    niced = [tid for tid in os.listdir("/proc/self/task") if _niceness(tid) == nice]
    assert len(niced) >= 2  # the pool's worker and the threads its model started


def _niceness(tid: str) -> int:
    with open(f"/proc/self/task/{tid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.slow
async def test_close_flushes_the_utterance_in_progress(asr: WhisperASR, tts: PiperTTS) -> None:
    results = await recognise(asr, np.concatenate([silence(300), await say(tts, QUESTION)]))
    assert len(results) >= 1 and results[-1].is_final
    assert {"opening", "hours"} <= set(words(results[-1]))


@pytest.mark.slow
async def test_silence_and_noise_give_no_transcript(asr: WhisperASR) -> None:
    audio = np.concatenate([silence(800), noise(1500, 300), noise(1500, 3000), silence(800)])
    assert await recognise(asr, audio) == []
    for level in (300.0, 3000.0):  # straight to Whisper, past the VAD
        recognition = await asr.transcribe(noise(1500, level, seed=2))
        assert recognition.text == ""


@pytest.mark.slow
async def test_audio_queue_drops_oldest_when_the_stream_falls_behind(asr: WhisperASR) -> None:
    stream = await asr.open_stream()
    for _ in range(200):  # 4 s pushed without yielding to the worker
        stream.push(AudioFrame.silence(RATE, 20))
    assert stream.dropped_ms == 4000 - asr.settings.max_queued_ms
    await stream.close()
    assert [t async for t in stream.results()] == []


@pytest.mark.slow
async def test_stream_misuse_is_rejected(asr: WhisperASR) -> None:
    with pytest.raises(SpeechError, match="English-only"):
        await asr.open_stream("fr-FR")
    stream = await asr.open_stream("en-US")
    with pytest.raises(ValueError, match="16000 Hz"):
        stream.push(AudioFrame.silence(8000, 20))
    await stream.close()
    await stream.close()  # idempotent
    with pytest.raises(SpeechError, match="closed"):
        stream.push(AudioFrame.silence(RATE, 20))
