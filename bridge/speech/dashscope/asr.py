"""Fun-ASR / Paraformer real-time recognition over the task protocol.

The sans-I/O :func:`sentence_transcript` maps ``result-generated`` sentences to
:class:`Transcript`s and :class:`AudioBatcher` batches caller audio into ~100 ms frames;
:class:`FunASR` is the asyncio adapter. During long silences (or when the caller's audio
stops, e.g. on hold) the stream keeps sending silent audio with ``heartbeat`` on, as the docs
require, so the task never hits the server's 60 s timeout mid-call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from bridge.media.frame import AudioFrame
from bridge.speech.base import ASR, ASRStream, Transcript
from bridge.speech.dashscope.errors import ConnectionLostError, DashScopeError
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.task_protocol import FINISHED, GENERATED, Event
from bridge.speech.dashscope.transport import TaskConnection, TaskPool, closed_error

if TYPE_CHECKING:
    from bridge.speech.dashscope.qwen_asr import QwenASR

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
FINISH_TIMEOUT = 10.0
# Batches of caller audio waiting for the socket (100 ms each); beyond this the oldest is dropped:
# a socket this far behind is failing, and the server's timestamps stay true to what it got.
MAX_QUEUED_BATCHES = 50


@dataclass(frozen=True, slots=True)
class RecognitionParams:
    """``run-task`` parameters; ``None`` leaves the server default."""

    model: str = "fun-asr-realtime"
    sample_rate: int | None = None  # 8000 for the *-8k-* models, else 16000
    language_hints: tuple[str, ...] | None = None  # default: the stream's language
    vocabulary_id: str | None = None
    phrase_id: str | None = None  # legacy hot-word list, sent as a payload resource
    semantic_punctuation_enabled: bool | None = False
    max_sentence_silence: int | None = None  # ms, 200–6000
    multi_threshold_mode_enabled: bool | None = None
    heartbeat: bool = True
    disfluency_removal_enabled: bool | None = None
    punctuation_prediction_enabled: bool | None = None
    inverse_text_normalization_enabled: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        silence = self.max_sentence_silence
        if silence is not None and not 200 <= silence <= 6000:
            raise ValueError("max_sentence_silence must be within 200–6000 ms")

    @property
    def rate(self) -> int:
        if self.sample_rate is not None:
            return self.sample_rate
        return 8000 if "8k" in self.model else 16000

    def parameters(self, language: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "format": "pcm",
            "sample_rate": self.rate,
            "language_hints": list(self.language_hints or (language,)),
            "heartbeat": self.heartbeat,
        }
        optional = {
            "vocabulary_id": self.vocabulary_id,
            "semantic_punctuation_enabled": self.semantic_punctuation_enabled,
            "max_sentence_silence": self.max_sentence_silence,
            "multi_threshold_mode_enabled": self.multi_threshold_mode_enabled,
            "disfluency_removal_enabled": self.disfluency_removal_enabled,
            "punctuation_prediction_enabled": self.punctuation_prediction_enabled,
            "inverse_text_normalization_enabled": self.inverse_text_normalization_enabled,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        params.update(self.extra)
        return params

    @property
    def resources(self) -> list[dict[str, str]] | None:
        if self.phrase_id is None:
            return None
        return [{"resource_id": self.phrase_id, "resource_type": "asr_phrase"}]


class AudioBatcher:
    """Sans-I/O: caller audio → ~100 ms frames to send, plus silent keep-alive frames while the
    caller's audio has stopped (shared by the Fun-ASR and Qwen-ASR clients)."""

    def __init__(
        self,
        sample_rate: int,
        metrics: StreamMetrics,
        frame_ms: int = 100,
        keepalive_after: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.frame_bytes = sample_rate * frame_ms // 1000 * 2
        self.sample_rate = sample_rate
        self.keepalive_after = keepalive_after
        self._buffer = b""
        self.last_sent: float | None = None

    def push(self, pcm: bytes, now: float) -> list[bytes]:
        """Batch caller audio; returns the frames to send now."""
        self._buffer += pcm
        frames = []
        while len(self._buffer) >= self.frame_bytes:
            frames.append(self._buffer[: self.frame_bytes])
            self._buffer = self._buffer[self.frame_bytes :]
        if frames:
            self._sent(now, sum(map(len, frames)))
        return frames

    def keepalive(self, now: float) -> bytes | None:
        """Silent audio while the caller's audio has stopped, so the task stays alive."""
        if self.last_sent is None or now - self.last_sent < self.keepalive_after:
            return None
        frame = self._buffer + bytes(self.frame_bytes - len(self._buffer))
        self._buffer = b""
        self._sent(now, len(frame))
        return frame

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def _sent(self, now: float, nbytes: int) -> None:
        self.metrics.start(now)
        self.last_sent = now
        self.metrics.audio_seconds += nbytes / 2 / self.sample_rate


def sentence_transcript(event: Event, metrics: StreamMetrics, now: float) -> Transcript | None:
    """Sans-I/O: one ``result-generated`` → a transcript (``None`` for heartbeats/empty)."""
    if event.event != GENERATED:
        return None
    sentence = event.output.get("sentence") or {}
    if sentence.get("heartbeat") is True or not sentence.get("text"):
        return None
    end = sentence.get("end_time")
    # ``sentence_end`` is authoritative; older replies only mark finals by an end_time.
    final = bool(sentence["sentence_end"]) if "sentence_end" in sentence else end is not None
    duration = event.usage.get("duration")
    if final and isinstance(duration, int | float):
        metrics.billed_audio_seconds += int(duration)
    metrics.first_packet(now)
    begin = int(sentence.get("begin_time") or 0)
    return Transcript(str(sentence["text"]), final, begin, int(end or 0) if final else 0)


class FunASR(ASR):
    """Fun-ASR / Paraformer real-time recognition (``paraformer-realtime-8k-v2`` takes phone
    audio at 8 kHz as is). Sockets are reused across calls after a clean finish."""

    def __init__(
        self,
        settings: DashScopeSettings | None = None,
        params: RecognitionParams | None = None,
        *,
        pool_size: int = 1,
        keepalive_after: float = 1.0,
    ) -> None:
        self.settings = settings or DashScopeSettings.from_env()
        self.params = params or RecognitionParams()
        self.sample_rate = self.params.rate
        self.keepalive_after = keepalive_after
        self.pool = TaskPool(self.settings, pool_size)

    async def open_stream(self, language: str = "en") -> FunASRStream:
        conn = await self.pool.acquire()
        try:
            await conn.ws.send(
                conn.protocol.start(
                    model=self.params.model,
                    task="asr",
                    function="recognition",
                    parameters=self.params.parameters(language),
                    resources=self.params.resources,
                )
            )
            async with asyncio.timeout(START_TIMEOUT):
                message = await conn.ws.recv()
            if isinstance(message, bytes):
                raise ConnectionLostError("binary frame before task-started")
            conn.protocol.receive(message)
        except ConnectionClosed as exc:
            await conn.close()
            raise closed_error(exc) from None
        except (DashScopeError, TimeoutError) as exc:
            await conn.close()
            if isinstance(exc, TimeoutError):
                raise ConnectionLostError("no task-started within 10 s") from None
            raise
        return FunASRStream(self, conn)

    async def aclose(self) -> None:
        await self.pool.aclose()


class QueuedASRStream(ASRStream):
    """Shared by the Fun-ASR and Qwen-ASR streams: rate-checked caller audio batched by an
    :class:`AudioBatcher` (with keep-alive frames) into a bounded outbox (``MAX_QUEUED_BATCHES``,
    the oldest dropped and counted in ``dropped_batches``) that a sender task drains, so it wakes
    once per 100 ms batch rather than per frame; transcripts handed over through a queue the
    receiver ends with ``None``; and a close that flushes, finishes and waits for the receiver.

    Subclasses set their connection before ``super().__init__`` and implement :meth:`_send`,
    :meth:`_finish`, :meth:`_read` and :meth:`_release`."""

    def __init__(self, asr: FunASR | QwenASR) -> None:
        self.asr = asr
        self.metrics = StreamMetrics(tasks=1)
        self.batcher = AudioBatcher(
            asr.sample_rate, self.metrics, keepalive_after=asr.keepalive_after
        )
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._error: DashScopeError | None = None
        self._closed = False
        self._outbox: deque[bytes] = deque()
        self._outbox_ready = asyncio.Event()
        self.dropped_batches = 0
        self._receiver = asyncio.create_task(self._receive())
        self._keepalive = asyncio.create_task(self._keep_alive())
        self._sender = asyncio.create_task(self._send_outbox())

    def push(self, frame: AudioFrame) -> None:
        if frame.sample_rate != self.asr.sample_rate:
            raise ValueError(f"expected {self.asr.sample_rate} Hz audio, got {frame.sample_rate}")
        if self._closed or not self._can_send():
            return
        for data in self.batcher.push(frame.to_bytes(), time.monotonic()):
            self._post(data)

    def _post(self, data: bytes) -> None:
        if len(self._outbox) == MAX_QUEUED_BATCHES:
            self._outbox.popleft()
            self.dropped_batches += 1
        self._outbox.append(data)
        self._outbox_ready.set()

    async def _send_outbox(self) -> None:
        """Send queued audio in order until the stream is closed and the outbox is empty."""
        while self._outbox or not self._closed:
            if not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            data = self._outbox.popleft()
            if self._can_send():
                await self._send(data)

    async def results(self) -> AsyncIterator[Transcript]:
        while (item := await self._queue.get()) is not None:
            yield item
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._keepalive.cancel()
        try:
            if self._can_send():
                rest = self.batcher.flush()
                if rest:
                    self._post(rest)
            self._outbox_ready.set()
            await self._sender
            if self._can_send():
                await self._finish()
            async with asyncio.timeout(FINISH_TIMEOUT):
                await asyncio.shield(self._receiver)
        except (ConnectionClosed, TimeoutError):
            self._connection_lost()
            self._receiver.cancel()
            self._queue.put_nowait(None)
        self.metrics.finished_at = time.monotonic()
        await self._release()

    def _can_send(self) -> bool:
        """Whether audio may go out now."""
        return True

    def _connection_lost(self) -> None:
        """The socket closed under the stream."""

    async def _send(self, data: bytes) -> None:
        """Send one batch of audio; a closed socket is left for the receiver to report."""
        raise NotImplementedError

    async def _finish(self) -> None:
        """Tell the server the audio has ended."""
        raise NotImplementedError

    async def _read(self) -> None:
        """Queue transcripts from the server until the task has finished."""
        raise NotImplementedError

    async def _release(self) -> None:
        """Give back or close the connection once the stream is done."""
        raise NotImplementedError

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            frame = self.batcher.keepalive(time.monotonic())
            if frame is not None and self._can_send():
                self._post(frame)

    async def _receive(self) -> None:
        try:
            await self._read()
        except ConnectionClosed as exc:
            self._connection_lost()
            self._error = closed_error(exc)
        except DashScopeError as exc:
            self._error = exc
        finally:
            self._keepalive.cancel()
            self._queue.put_nowait(None)


class FunASRStream(QueuedASRStream):
    """One call's recognition task; ``metrics`` is readable while it runs."""

    asr: FunASR

    def __init__(self, asr: FunASR, conn: TaskConnection) -> None:
        self.conn = conn
        super().__init__(asr)

    def _can_send(self) -> bool:
        return self.conn.protocol.can_send_audio

    def _connection_lost(self) -> None:
        self.conn.protocol.connection_lost()

    async def _send(self, data: bytes) -> None:
        try:
            await self.conn.ws.send(data)
        except ConnectionClosed:
            self.conn.protocol.connection_lost()  # the receiver reports why

    async def _finish(self) -> None:
        await self.conn.ws.send(self.conn.protocol.finish())

    async def _release(self) -> None:
        await self.asr.pool.release(self.conn)

    async def _read(self) -> None:
        while True:
            message = await self.conn.ws.recv()
            if isinstance(message, bytes):
                continue  # ASR never sends audio; ignore rather than fail the call
            event = self.conn.protocol.receive(message)
            transcript = sentence_transcript(event, self.metrics, time.monotonic())
            if transcript is not None:
                self._queue.put_nowait(transcript)
            if event.event == FINISHED:
                break


__all__ = [
    "AudioBatcher",
    "FunASR",
    "FunASRStream",
    "QueuedASRStream",
    "RecognitionParams",
    "sentence_transcript",
]
