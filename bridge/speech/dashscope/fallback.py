"""Keep a call talking through cloud faults: retry the primary engine once, then fall back.

Both wrappers implement the plain :mod:`bridge.speech.base` interfaces, so the call does not
know which engine is speaking or listening. Fallback audio is resampled to the primary's rate.
:class:`ApologyTTS` is the fallback of the ``apology`` policy: a fixed prompt instead of a voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

from bridge.media.frame import AudioFrame
from bridge.media.resample import Resampler
from bridge.speech.base import (
    ASR,
    TTS,
    ASRStream,
    SpeechChunk,
    SpeechError,
    Transcript,
    text_once,
)
from bridge.speech.dashscope.metrics import StreamMetrics, combined

log = logging.getLogger(__name__)


class _Recorder:
    """Reads the turn's text once and can replay what has not been spoken yet."""

    def __init__(self, text: AsyncIterable[str]) -> None:
        self._source = aiter(text)
        self.read: list[str] = []
        self.done = False

    async def replay(self, skip_chars: int) -> AsyncIterator[str]:
        """All text read so far minus ``skip_chars`` non-space characters, then the rest."""
        pending = "".join(self.read)
        cut = 0
        while skip_chars > 0 and cut < len(pending):
            skip_chars -= not pending[cut].isspace()
            cut += 1
        if pending[cut:].strip():
            yield pending[cut:]
        while not self.done:
            try:
                piece = await anext(self._source)
            except StopAsyncIteration:
                self.done = True
                return
            self.read.append(piece)
            yield piece


class FallbackTTS(TTS):
    """``primary`` (retried ``retries`` times on :class:`SpeechError`), then ``fallback``.

    After a mid-turn failure the sentence that was playing is spoken again from its start by
    the next engine; sentences already finished are not repeated.
    """

    metered = True  # the primary's figures, plus failed attempts

    def __init__(self, primary: TTS, fallback: TTS, retries: int = 1) -> None:
        self.primary, self.fallback, self.retries = primary, fallback, retries
        self.sample_rate = primary.sample_rate
        self.failures: list[SpeechError] = []

    async def synthesize(
        self,
        text: AsyncIterable[str],
        voice: str | None = None,
        metrics: StreamMetrics | None = None,
    ) -> AsyncIterator[SpeechChunk]:
        recorder = _Recorder(text)
        engines = [self.primary] * (1 + self.retries) + [self.fallback]
        spoken, current, timestamp, attempt = 0, "", 0, 0
        while True:
            engine = engines[attempt]
            resampler = Resampler(engine.sample_rate, self.sample_rate)
            engine_voice = voice if engine is self.primary else None
            replay = recorder.replay(spoken)
            if engine.metered and metrics is not None:
                stream = engine.synthesize(replay, engine_voice, metrics=metrics)  # type: ignore[call-arg]
            else:
                stream = engine.synthesize(replay, engine_voice)
            try:
                async for chunk in stream:
                    if chunk.text:
                        spoken += _chars(current)
                        current = chunk.text
                    samples = resampler.process(chunk.audio.samples)
                    frame = AudioFrame(samples, self.sample_rate, timestamp)
                    timestamp = frame.end_timestamp
                    yield SpeechChunk(frame, chunk.text, chunk.words)
                return
            except SpeechError as exc:
                self.failures.append(exc)
                if metrics is not None:
                    metrics.failures += 1
                attempt = _next_attempt(attempt, len(engines), exc)
                log.warning("TTS failed (%s); switching to attempt %d", exc, attempt + 1)
                current = ""  # the interrupted sentence is spoken again
            finally:
                await stream.aclose()  # type: ignore[attr-defined]


def _next_attempt(attempt: int, engines: int, exc: SpeechError) -> int:
    """Retry the primary only when it may help (not after e.g. an auth failure)."""
    if attempt == engines - 1:
        raise exc
    return attempt + 1 if getattr(exc, "retryable", True) else engines - 1


def _chars(text: str) -> int:
    return sum(not ch.isspace() for ch in text)


@dataclass(frozen=True, slots=True)
class Apology:
    """The ``apology`` policy for a recogniser lost mid-call: what the caller hears, and
    whether the call then ends (else it goes on with the embedded recogniser)."""

    text: str
    hang_up: bool = False


class FallbackASR(ASR):
    """``primary`` (reopened ``retries`` times on :class:`SpeechError`), then ``fallback``.

    Audio since the last final transcript (up to ``replay_seconds``) is replayed into the new
    stream, so the utterance in progress is not lost. With an ``apology``, a stream that falls
    back mid-call hands it to its ``on_apology`` (the call says it).
    """

    def __init__(
        self,
        primary: ASR,
        fallback: ASR,
        retries: int = 1,
        replay_seconds: float = 10.0,
        apology: Apology | None = None,
    ) -> None:
        self.primary, self.fallback, self.retries = primary, fallback, retries
        self.replay_seconds = replay_seconds
        self.apology = apology
        self.sample_rate = primary.sample_rate
        self.failures: list[SpeechError] = []

    async def open_stream(self, language: str = "en") -> ASRStream:
        stream = FallbackStream(self, language)
        await stream.switch(first=True)
        return stream


class FallbackStream(ASRStream):
    def __init__(self, owner: FallbackASR, language: str) -> None:
        self.owner, self.language = owner, language
        self.engines = [owner.primary] * (1 + owner.retries) + [owner.fallback]
        self.attempt = 0
        self.stream: ASRStream | None = None
        self.resampler: Resampler | None = None
        self.engine_rate = owner.sample_rate
        self.recent: deque[AudioFrame] = deque()
        self.recent_s = 0.0  # their length, kept as they come and go
        self.lock = asyncio.Lock()
        self.closing = False
        self.opened: list[ASRStream] = []
        self.failures = 0
        self.on_apology: Callable[[Apology], None] | None = None

    @property
    def metrics(self) -> StreamMetrics:
        """The figures of every cloud stream opened for this call, as one, plus failures."""
        found = (getattr(stream, "metrics", None) for stream in self.opened)
        total = combined([m for m in found if isinstance(m, StreamMetrics)])
        total.failures += self.failures
        return total

    async def switch(self, first: bool = False) -> None:
        """Open the next engine's stream (skipping engines that fail to open)."""
        async with self.lock:
            while True:
                engine = self.engines[self.attempt]
                try:
                    self.stream = await engine.open_stream(self.language)
                    self.opened.append(self.stream)
                    break
                except SpeechError as exc:
                    self.owner.failures.append(exc)
                    self.failures += 1
                    self.attempt = _next_attempt(self.attempt, len(self.engines), exc)
            self.engine_rate = engine.sample_rate
            self.resampler = Resampler(self.owner.sample_rate, engine.sample_rate)
            if not first:
                for frame in self.recent:
                    self._forward(frame)

    def push(self, frame: AudioFrame) -> None:
        """Keep the frame for a replay, and pass it on unless a switch is under way (the new
        stream then gets it in the replay); bounded by ``replay_seconds``, oldest dropped."""
        self.recent.append(frame)
        self.recent_s += frame.duration
        while self.recent and self.recent_s > self.owner.replay_seconds:
            self.recent_s -= self.recent.popleft().duration
        if not self.lock.locked():
            self._forward(frame)

    def _forward(self, frame: AudioFrame) -> None:
        assert self.stream is not None and self.resampler is not None
        samples = self.resampler.process(frame.samples)
        with contextlib.suppress(SpeechError):  # results() sees the failure and switches
            self.stream.push(AudioFrame(samples, self.engine_rate))

    async def results(self) -> AsyncIterator[Transcript]:
        while True:
            assert self.stream is not None
            try:
                async for transcript in self.stream.results():
                    if transcript.is_final:
                        self.recent.clear()
                        self.recent_s = 0.0
                    yield transcript
                return
            except SpeechError as exc:
                self.owner.failures.append(exc)
                self.failures += 1
                self.attempt = _next_attempt(self.attempt, len(self.engines), exc)
                log.warning("ASR failed (%s); switching to attempt %d", exc, self.attempt + 1)
                failed = self.stream
                await self.switch()
                await _close_quietly(failed)
                apology = self.owner.apology
                if self.attempt == len(self.engines) - 1 and apology and self.on_apology:
                    self.on_apology(apology)
                if self.closing:
                    await self.stream.close()

    async def close(self) -> None:
        self.closing = True
        if self.stream is not None:
            await _close_quietly(self.stream)


async def _close_quietly(stream: ASRStream) -> None:
    try:
        await stream.close()
    except SpeechError as exc:
        log.info("closing a failed ASR stream: %s", exc)


class ApologyTTS(TTS):
    """Says only the apology, rendered once at start, whatever the text: the ``apology`` policy
    keeps one voice for a whole failed turn rather than finishing it in another voice."""

    def __init__(self, chunks: list[SpeechChunk], sample_rate: int) -> None:
        self.chunks, self.sample_rate = chunks, sample_rate

    @classmethod
    async def render(cls, tts: TTS, text: str) -> ApologyTTS:
        chunks = [chunk async for chunk in tts.synthesize(text_once(text))]
        return cls(chunks, tts.sample_rate)

    async def synthesize(
        self, text: AsyncIterable[str], voice: str | None = None
    ) -> AsyncIterator[SpeechChunk]:
        for chunk in self.chunks:
            yield chunk
