"""Tiny deterministic engines for protocol tests (no models): a tone per character, a fixed text."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, AsyncIterator

import numpy as np

from bridge.media.frame import AudioFrame
from bridge.speech.base import ASR, TTS, ASRStream, SpeechChunk, Transcript

MS_PER_CHAR = 20


class ToneTTS(TTS):
    """20 ms of a 440 Hz tone per character, one chunk per word."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def synthesize(
        self, text: AsyncIterable[str], voice: str | None = None
    ) -> AsyncIterator[SpeechChunk]:
        timestamp = 0
        async for piece in text:
            self.texts.append(piece)
            for word in piece.split():
                n = self.sample_rate * MS_PER_CHAR * (len(word) + 1) // 1000
                samples = _word_tone(self.sample_rate, n)
                yield SpeechChunk(AudioFrame(samples, self.sample_rate, timestamp), word)
                timestamp += n
                await asyncio.sleep(0)


@functools.cache
def _word_tone(rate: int, n: int) -> np.ndarray:
    """Canned audio, so load tests measure the media path rather than this fake."""
    samples = (8000 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.int16)
    samples.flags.writeable = False
    return samples


class FixedASR(ASR):
    """Hears ``text`` in any loud audio: a partial per 200 ms of speech, a final after 400 ms of
    silence or at close."""

    sample_rate = 16000

    def __init__(self, text: str = "hello world") -> None:
        self.text = text

    async def open_stream(self, language: str = "en") -> ASRStream:
        return _FixedStream(self.text, self.sample_rate)


class _FixedStream(ASRStream):
    def __init__(self, text: str, rate: int) -> None:
        self.text, self.rate = text, rate
        self.queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self.pos = 0
        self.speech_start: int | None = None
        self.speech_samples = 0
        self.silence = 0

    def push(self, frame: AudioFrame) -> None:
        loud = frame.rms() > 500
        if loud:
            if self.speech_start is None:
                self.speech_start = self.pos
            before = self.speech_samples
            self.speech_samples += frame.num_samples
            self.silence = 0
            step = self.rate // 5
            if self.speech_samples // step > before // step:
                words = self.text.split()
                shown = min(len(words), self.speech_samples // step)
                self.queue.put_nowait(
                    Transcript(" ".join(words[:shown]), False, self._ms(self.speech_start))
                )
        elif self.speech_start is not None:
            self.silence += frame.num_samples
            if self.silence >= self.rate * 2 // 5:
                self._final()
        self.pos += frame.num_samples

    def _ms(self, samples: int) -> int:
        return samples * 1000 // self.rate

    def _final(self) -> None:
        if self.speech_start is not None:
            end = self.pos - self.silence if self.silence else self.pos
            self.queue.put_nowait(
                Transcript(self.text, True, self._ms(self.speech_start), self._ms(end))
            )
        self.speech_start, self.speech_samples, self.silence = None, 0, 0

    async def results(self) -> AsyncIterator[Transcript]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def close(self) -> None:
        self._final()
        self.queue.put_nowait(None)


def tone(rate: int, ms: int, amplitude: int = 8000) -> AudioFrame:
    t = np.arange(rate * ms // 1000) / rate
    return AudioFrame((amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.int16), rate)
