"""Engine choices for conformance tests: the embedded models (loaded once) or the fakes."""

from __future__ import annotations

import asyncio
import functools
import re

import numpy as np

from bridge.emulator.audio import convert
from bridge.emulator.task_handler import feed_engine
from bridge.media.frame import AudioFrame
from bridge.speech.base import ASR, TTS, text_once


@functools.cache
def real_engines() -> tuple[ASR, TTS]:
    from bridge.emulator.server import default_engines

    return default_engines()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


async def transcribe(asr: ASR, samples: np.ndarray, rate: int) -> str:
    """Final transcript of a whole utterance (with trailing silence so the VAD closes it)."""
    pcm = convert(samples, rate, asr.sample_rate)
    pcm = np.concatenate([pcm, np.zeros(asr.sample_rate, np.int16)])
    stream = await asr.open_stream("en")
    feed: asyncio.Queue[AudioFrame | None] = asyncio.Queue()
    step = asr.sample_rate // 50
    for i in range(0, pcm.size, step):
        feed.put_nowait(AudioFrame(pcm[i : i + step], asr.sample_rate, i))
    feed.put_nowait(None)
    await feed_engine(stream, feed, speed=1.0)  # streaming engines keep a bounded backlog
    return " ".join([t.text async for t in stream.results() if t.is_final])


async def speech(tts: TTS, text: str) -> tuple[np.ndarray, int]:
    chunks = [c.audio.samples async for c in tts.synthesize(text_once(text))]
    return np.concatenate(chunks), tts.sample_rate
