"""Embedded speech recognition: Whisper tiny.en, cut into utterances by a VAD.

Whisper is not a streaming model, so a stream re-decodes the growing utterance for partial
results and decodes it once more when the caller stops. Latency is what the design is about
(caller stops → bot speaks in under 0.8 s, and endpointing silence is most of that budget):

* the final decode starts speculatively as soon as the VAD confirms a short silence
  (``speculate_after_ms``) and is reused when the silence lasts to the endpoint, or discarded
  when the caller speaks again, so the decode overlaps the endpointing wait;
* the encoder sees the utterance padded to a short window (``min_window_s``) instead of Whisper's
  fixed 30 s: its cost is linear in the window, and padding the *audio* with silence keeps the
  accuracy of the full window on telephone-length turns at a fraction of the cost
  (2 s of speech: ~0.3 s instead of ~1 s here); the one failure it adds, greedy decoding
  starting the utterance over after its end, is cut off;
* greedy decoding without timestamps or previous-text conditioning;
* partials decode at low priority on their own model instance (see ``runtime``), so a final
  never waits for one; a partial is skipped, not queued, while another one runs, and none
  starts while the caller seems to pause, as the final decode may be due any moment.

Whisper invents text on noise ("you", "Thank you."), so results judged non-speech are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer

from bridge.media.frame import AudioFrame
from bridge.media.vad import SpeechStarted, Vad, VadEvent
from bridge.speech.base import ASR, ASRStream, SpeechError, Transcript
from bridge.speech.local.runtime import LocalRuntime, get_runtime

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

RATE = 16000
_MAX_WINDOW_S = 30  # Whisper's encoder cannot see further
# Sound annotations such as "[BLANK_AUDIO]", "(coughs)", "*music*"; not "(555)" of a number.
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)\d]*\)|\*[^*\d]*\*|[♪♫]")
# What Whisper says about noise; dropped unless it was sure it heard them.
_NOISE_PHRASES = frozenset(
    {"you", "thank you", "thanks for watching", "thank you for watching", "bye", "so", "i'm"}
)


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    """Tuning of the recogniser; times are in audio time, not wall-clock time."""

    vad_engine: Literal["silero", "webrtc"] = "silero"
    vad_threshold: float = 0.5
    min_speech_ms: int = 100
    speculate_after_ms: int = 200  # silence after which the final decode starts
    endpoint_ms: int = 500  # silence that ends an utterance
    partial_interval_ms: int = 500  # least audio between two partial decodes
    preroll_ms: int = 200  # audio before the detected onset that is decoded too
    max_utterance_ms: int = 25_000  # longer speech is cut into several finals
    max_queued_ms: int = 2_000  # audio awaiting the VAD; beyond it the oldest is dropped
    max_results: int = 64  # unread transcripts; beyond it the oldest is dropped
    min_window_s: int = 8  # shortest encoder window (30 gives stock Whisper)
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -0.5

    def __post_init__(self) -> None:
        if self.endpoint_ms < self.speculate_after_ms:
            raise ValueError("endpoint_ms must not be shorter than speculate_after_ms")
        if self.max_utterance_ms > (_MAX_WINDOW_S - 1) * 1000:
            raise ValueError(f"max_utterance_ms must leave room in the {_MAX_WINDOW_S} s window")


@dataclass(frozen=True, slots=True)
class Recognition:
    """One decode. ``text`` is empty when the audio was judged not to be speech."""

    text: str
    no_speech_prob: float
    avg_logprob: float

    @property
    def confidence(self) -> float:
        return math.exp(self.avg_logprob)


def clean_text(text: str, no_speech_prob: float, avg_logprob: float, s: WhisperSettings) -> str:
    """The text of a decode, or "" if it is what Whisper produces on non-speech."""
    text = " ".join(_ANNOTATION.sub(" ", text).split())
    if not any(char.isalnum() for char in text):
        return ""
    if no_speech_prob > s.no_speech_threshold and avg_logprob < s.logprob_threshold:
        return ""
    unsure = no_speech_prob > s.no_speech_threshold / 2 or avg_logprob < s.logprob_threshold
    if unsure and _plain(text) in _NOISE_PHRASES:
        return ""
    return _without_repeat(text)


def _plain(text: str) -> str:
    return re.sub(r"[^\w\s']", "", text).strip().lower()


def _without_repeat(text: str) -> str:
    """Drop a verbatim restart of the text ("Hi there. Hi there. Hi").

    Greedy decoding loops like this when the audio ends well before the encoder window does.
    Only a restart right after a sentence end counts, so "No, no, no." stays as said.
    """
    words = text.split()
    plain = [_plain(word) for word in words]
    for period in range(1, len(words)):
        repeat = plain[period:]
        if words[period - 1][-1] in ".?!" and repeat == plain[: len(repeat)]:
            return " ".join(words[:period])
    return text


class WhisperASR(ASR):
    """Whisper tiny.en on the shared runtime; one instance per process."""

    sample_rate = RATE

    def __init__(
        self, runtime: LocalRuntime | None = None, settings: WhisperSettings | None = None
    ) -> None:
        self.runtime = runtime or get_runtime()
        self.settings = settings or WhisperSettings()

    async def open_stream(self, language: str = "en") -> WhisperStream:
        language = language.split("-")[0].lower()
        model = await self.runtime.loaded_whisper()
        if language != "en" and not model.model.is_multilingual:
            raise SpeechError(f"the installed Whisper model is English-only, not {language!r}")
        s = self.settings
        vad = await self.runtime.vad_pool.run(
            lambda: Vad(
                RATE,
                engine=s.vad_engine,
                threshold=s.vad_threshold,
                min_speech_ms=s.min_speech_ms,
                min_silence_ms=s.speculate_after_ms,
            )
        )
        return WhisperStream(self, vad, language)

    async def transcribe(
        self, samples: np.ndarray, language: str = "en", *, partial: bool = False
    ) -> Recognition:
        """Decode one utterance of 16 kHz int16 audio; a ``partial`` one at low priority."""
        runtime = self.runtime
        pool, model = (
            (runtime.partial_pool, runtime.partial_whisper)
            if partial
            else (runtime.asr_pool, runtime.whisper)
        )
        try:
            return await pool.run(lambda: self._decode(model(), samples, language))
        except SpeechError:
            raise
        except Exception as exc:
            raise SpeechError(f"Whisper failed: {exc}") from exc

    def _decode(self, model: WhisperModel, samples: np.ndarray, language: str) -> Recognition:
        seconds = len(samples) / RATE
        window = min(_MAX_WINDOW_S, max(self.settings.min_window_s, math.ceil(seconds + 1)))
        audio = np.zeros(window * RATE, np.float32)
        clip = samples[: len(audio)]
        audio[: len(clip)] = clip / 32768
        features = model.feature_extractor(audio)[None, :, : window * 100]
        encoded = model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=False
        )
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=min(model.max_length, len(prompt) + 10 + int(8 * seconds)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        text = tokenizer.decode([t for t in result.sequences_ids[0] if t < tokenizer.eot])
        avg_logprob = result.scores[0] if result.scores else -math.inf
        cleaned = clean_text(text, result.no_speech_prob, avg_logprob, self.settings)
        return Recognition(cleaned, result.no_speech_prob, avg_logprob)


class _History:
    """Recent caller audio, addressed by sample index in the stream."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self.start = 0
        self.end = 0

    def append(self, frame: AudioFrame) -> None:
        if frame.timestamp > self.end:  # audio dropped under overload: keep the clock
            self._chunks.append(np.zeros(frame.timestamp - self.end, np.int16))
        self._chunks.append(frame.samples)
        self.end = frame.end_timestamp

    def slice(self, start: int, end: int) -> np.ndarray:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio[start - self.start : end - self.start]

    def trim(self, keep_from: int) -> None:
        while self._chunks and self.start + len(self._chunks[0]) <= keep_from:
            self.start += len(self._chunks.popleft())


@dataclass(slots=True)
class _Decode:
    end: int  # sample index where the audio decoded ends (exclusive)
    task: asyncio.Task[Recognition]


@dataclass(slots=True)
class _Utterance:
    onset: int  # where the VAD heard speech begin
    start: int  # first sample decoded (onset less the pre-roll)
    next_partial_at: int
    silence_from: int | None = None  # where the current silence began; None while speaking
    speculative: _Decode | None = None  # final decode started in that silence
    finalised: bool = False


def _ms(samples: int) -> int:
    return samples * 1000 // RATE


def _samples(ms: float) -> int:
    return round(ms * RATE / 1000)


class WhisperStream(ASRStream):
    """One call's recognition.

    Bounded queues: caller audio waiting for the VAD keeps at most ``max_queued_ms`` (the oldest
    is dropped and counted in ``dropped_ms``; stream times stay true); unread transcripts keep
    at most ``max_results`` (a new partial replaces an unread one, then the oldest is dropped).
    Stream times count samples pushed since the stream opened.
    """

    def __init__(self, asr: WhisperASR, vad: Vad, language: str) -> None:
        self._asr = asr
        self._settings = asr.settings
        self._vad = vad
        self._language = language
        self.dropped_ms = 0
        self._received = 0
        self._inbox: deque[AudioFrame] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._history = _History()
        self._utterance: _Utterance | None = None
        self._partial: _Decode | None = None
        self._last_final: asyncio.Task[None] | None = None
        self._out: deque[Transcript] = deque()
        self._out_changed = asyncio.Event()
        self._error: SpeechError | None = None
        self._closing = False
        self._ended = asyncio.Event()
        self._worker = asyncio.create_task(self._run())

    def push(self, frame: AudioFrame) -> None:
        if frame.sample_rate != RATE:
            raise ValueError(f"Whisper streams take {RATE} Hz audio, not {frame.sample_rate}")
        if self._error is not None:
            raise self._error
        if self._closing:
            raise SpeechError("recognition stream is closed")
        self._inbox.append(AudioFrame(frame.samples, RATE, self._received))
        self._received += frame.num_samples
        self._queued += frame.num_samples
        limit = _samples(self._settings.max_queued_ms)
        while self._queued > limit and len(self._inbox) > 1:
            dropped = self._inbox.popleft().num_samples
            self._queued -= dropped
            self.dropped_ms += _ms(dropped)
        self._wake.set()

    async def results(self) -> AsyncIterator[Transcript]:
        while True:
            while self._out:
                yield self._out.popleft()
            if self._ended.is_set():
                if self._error is not None:
                    raise self._error
                return
            self._out_changed.clear()
            await self._out_changed.wait()

    async def close(self) -> None:
        if self._closing:
            await self._ended.wait()
            return
        self._closing = True
        self._wake.set()
        try:
            await self._worker
            utterance = self._utterance
            if utterance is not None and self._error is None:
                end = utterance.silence_from
                self._finalise(utterance, self._history.end if end is None else end)
            if self._last_final is not None:
                await self._last_final
        finally:
            if self._partial is not None:
                self._partial.task.cancel()
            self._end()

    # The worker: VAD in the pool, then utterance bookkeeping on the loop.

    async def _run(self) -> None:
        try:
            while self._error is None and (self._inbox or not self._closing):
                if not self._inbox:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                frames = list(self._inbox)
                self._inbox.clear()
                self._queued = 0
                vad = self._vad
                events = await self._asr.runtime.vad_pool.run(
                    lambda: [vad.process(frame) for frame in frames]  # noqa: B023
                )
                for frame, frame_events in zip(frames, events, strict=True):
                    self._advance(frame, frame_events)
        except Exception as exc:
            self._fail(exc)

    def _advance(self, frame: AudioFrame, events: list[VadEvent]) -> None:
        """Take one frame and its VAD events, in stream order, so batching changes nothing."""
        self._history.append(frame)
        for event in events:
            at = _samples(event.at_ms)
            if isinstance(event, SpeechStarted):
                self._speech_started(at)
            else:
                self._silence_started(at)
        self._tick()

    def _speech_started(self, at: int) -> None:
        utterance = self._utterance
        if utterance is None:
            s = self._settings
            self._utterance = _Utterance(
                onset=at,
                start=max(self._history.start, at - _samples(s.preroll_ms)),
                next_partial_at=at + _samples(s.partial_interval_ms),
            )
        elif utterance.silence_from is not None:  # the caller went on: same utterance
            utterance.silence_from = None
            if utterance.speculative is not None:
                utterance.speculative.task.cancel()
                utterance.speculative = None

    def _silence_started(self, at: int) -> None:
        utterance = self._utterance
        if utterance is None or utterance.silence_from is not None:
            return
        utterance.silence_from = at
        utterance.speculative = self._decode(utterance, self._history.end)

    def _tick(self) -> None:
        s = self._settings
        now = self._history.end
        utterance = self._utterance
        if utterance is None:
            pass
        elif utterance.silence_from is not None:
            if now - utterance.silence_from >= _samples(s.endpoint_ms):
                self._finalise(utterance, utterance.silence_from)
        elif now - utterance.start >= _samples(s.max_utterance_ms):
            self._finalise(utterance, now)
            self._utterance = _Utterance(now, now, now + _samples(s.partial_interval_ms))
        elif now >= utterance.next_partial_at:
            self._maybe_partial(utterance, now)
        # Keep the utterance being heard, or the pre-roll of the next one.
        keep = now - _samples(s.preroll_ms) if self._utterance is None else self._utterance.start
        self._history.trim(keep)

    def _maybe_partial(self, utterance: _Utterance, now: int) -> None:
        running = self._partial is not None and not self._partial.task.done()
        pausing = self._vad.probability < self._vad.exit_threshold  # the final may be due first
        if running or pausing or self._asr.runtime.partial_pool.busy:
            return  # skipped: a later partial supersedes this one anyway
        utterance.next_partial_at = now + _samples(self._settings.partial_interval_ms)
        decode = self._decode(utterance, now, partial=True)
        self._partial = decode
        decode.task.add_done_callback(lambda _: self._partial_done(utterance, decode))

    def _partial_done(self, utterance: _Utterance, decode: _Decode) -> None:
        task = decode.task
        if task.cancelled() or utterance.finalised or self._ended.is_set():
            return
        if task.exception() is not None:
            log.warning("partial decode failed: %s", task.exception())
            return
        pending_final = self._last_final is not None and not self._last_final.done()
        text = task.result().text
        if text and not pending_final:  # never show the next utterance before the last final
            self._emit(Transcript(text, False, _ms(utterance.onset), _ms(decode.end)))

    def _decode(self, utterance: _Utterance, end: int, *, partial: bool = False) -> _Decode:
        audio = self._history.slice(utterance.start, end)
        task = asyncio.create_task(self._asr.transcribe(audio, self._language, partial=partial))
        return _Decode(end, task)

    def _finalise(self, utterance: _Utterance, end: int) -> None:
        """Emit the utterance's final result, in order, reusing the speculative decode."""
        utterance.finalised = True
        self._utterance = None
        decode = utterance.speculative or self._decode(utterance, self._history.end)
        self._last_final = asyncio.create_task(
            self._deliver_final(self._last_final, decode, _ms(utterance.onset), _ms(end))
        )

    async def _deliver_final(
        self, previous: asyncio.Task[None] | None, decode: _Decode, start_ms: int, end_ms: int
    ) -> None:
        if previous is not None:
            await previous
        try:
            recognition = await decode.task
        except Exception as exc:
            self._fail(exc)
            return
        if recognition.text:
            self._emit(Transcript(recognition.text, True, start_ms, end_ms, recognition.confidence))

    def _emit(self, transcript: Transcript) -> None:
        if not transcript.is_final and self._out and not self._out[-1].is_final:
            self._out.pop()  # a partial is a snapshot: an unread older one is stale
        self._out.append(transcript)
        while len(self._out) > self._settings.max_results:
            dropped = self._out.popleft()
            log.warning("results not read: dropped %r", dropped.text)
        self._out_changed.set()

    def _fail(self, exc: Exception) -> None:
        log.exception("recognition stream failed", exc_info=exc)
        if self._error is None:
            error = exc if isinstance(exc, SpeechError) else SpeechError(str(exc))
            self._error = error
        self._end()

    def _end(self) -> None:
        self._closing = True
        self._wake.set()
        self._ended.set()
        self._out_changed.set()
