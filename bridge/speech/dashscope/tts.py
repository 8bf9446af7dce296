"""CosyVoice streaming TTS over the task protocol (duplex: text in as it comes, PCM out).

The sans-I/O :class:`CosyVoiceReader` turns server events and audio frames into
:class:`SpeechChunk`s; :class:`CosyVoiceTTS` is the asyncio adapter that feeds dialog text in
sentence-sized ``continue-task``s, respects the 23 s text-gap rule and the text limits, and
cancels on barge-in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from bridge.media.frame import AudioFrame
from bridge.speech.base import TTS, SpeechChunk, WordMark
from bridge.speech.dashscope.errors import ConnectionLostError, DashScopeError
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.task_protocol import FINISHED, GENERATED, Event
from bridge.speech.dashscope.text import SentenceSplitter, billed_characters
from bridge.speech.dashscope.transport import TaskConnection, TaskPool, closed_error

log = logging.getLogger(__name__)

SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
MESSAGE_CHAR_LIMIT = 2000  # the stricter of the documented per-continue-task limits
TASK_CHAR_LIMIT = 200_000  # cumulative per task
TEXT_GAP_LIMIT = 20.0  # server fails a task after 23 s without text; finish it before that
START_TIMEOUT = 10.0
CANCEL_DRAIN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class CosyVoiceParams:
    """``run-task`` parameters; ``None`` fields are left to the server default."""

    model: str = "cosyvoice-v3-flash"
    voice: str = "longanyang"
    sample_rate: int = 16000
    volume: int = 50
    rate: float = 1.0
    pitch: float = 1.0
    instruction: str | None = None
    language_hints: tuple[str, ...] | None = None
    word_timestamps: bool = False
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"CosyVoice sample_rate must be one of {SAMPLE_RATES}")
        if self.instruction is not None and len(self.instruction) > 100:
            raise ValueError("CosyVoice instruction is limited to 100 characters")

    def parameters(self, voice: str | None, ssml: bool) -> dict[str, Any]:
        params: dict[str, Any] = {
            "text_type": "PlainText",
            "voice": voice or self.voice,
            "format": "pcm",
            "sample_rate": self.sample_rate,
            "volume": self.volume,
            "rate": self.rate,
            "pitch": self.pitch,
            "enable_ssml": ssml,
            "word_timestamp_enabled": self.word_timestamps,
        }
        optional = {
            "instruction": self.instruction,
            "seed": self.seed,
            "language_hints": list(self.language_hints) if self.language_hints else None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        params.update(self.extra)
        return params


def split_for_limit(text: str, limit: int = MESSAGE_CHAR_LIMIT) -> list[str]:
    """Cut a piece of text so no ``continue-task`` exceeds the billed-character limit."""
    parts: list[str] = []
    while billed_characters(text) > limit:
        cut = limit // 2  # worst case: every character is CJK
        space = text.rfind(" ", cut // 2, cut)
        cut = space if space > 0 else cut
        parts.append(text[:cut])
        text = text[cut:]
    if text:
        parts.append(text)
    return parts


class CosyVoiceReader:
    """Turns one turn's server messages into speech chunks (sans-I/O).

    ``timestamp`` runs across all tasks of the turn. Audio chunks carry the sentence text on the
    first chunk of each sentence. Word timestamps arrive after their audio, so they come as an
    empty chunk whose ``timestamp`` is the sentence start and whose marks are relative to it;
    duplicates (sentence-end and task-finished both carrying words) are dropped.
    """

    def __init__(self, sample_rate: int, metrics: StreamMetrics) -> None:
        self.sample_rate = sample_rate
        self.metrics = metrics
        # Usage is cumulative per task: earlier tasks (and attempts) are added to this one's.
        self._billed_before = metrics.billed_characters
        self._billed_task = 0
        self.timestamp = 0
        self._pending_text = ""
        self._sentence = -1
        self._sentence_start: dict[int, int] = {}
        self._seen_words: set[tuple[int, int]] = set()
        self._odd = b""

    def on_event(self, event: Event) -> list[SpeechChunk]:
        output = event.output
        chars = event.usage.get("characters")
        if isinstance(chars, int):
            self._billed_task = max(self._billed_task, chars)
            self.metrics.billed_characters = self._billed_before + self._billed_task
        if event.event == FINISHED:
            self._billed_before, self._billed_task = self.metrics.billed_characters, 0
        if event.event not in (GENERATED, FINISHED):
            return []
        sentence = output.get("sentence") or {}
        index = sentence.get("index", self._sentence if self._sentence >= 0 else 0)
        if output.get("type") == "sentence-begin":
            self._sentence = index
            self._pending_text += output.get("original_text", "")
            return []
        return self._words(index, sentence.get("words") or [])

    def on_audio(self, data: bytes, now: float) -> SpeechChunk | None:
        data, self._odd = self._odd + data, b""
        if len(data) % 2:
            data, self._odd = data[:-1], data[-1:]
        if not data:
            return None
        self.metrics.first_packet(now)
        frame = AudioFrame.from_bytes(data, self.sample_rate, self.timestamp)
        self._sentence_start.setdefault(self._sentence, self.timestamp)
        self.timestamp = frame.end_timestamp
        self.metrics.audio_seconds += frame.duration
        text, self._pending_text = self._pending_text, ""
        return SpeechChunk(frame, text)

    def _words(self, index: int, words: list[dict[str, Any]]) -> list[SpeechChunk]:
        marks = []
        for word in words:
            key = (index, int(word.get("begin_index", len(marks))))
            if key in self._seen_words:
                continue
            self._seen_words.add(key)
            marks.append(WordMark(str(word.get("text", "")), int(word.get("end_time", 0))))
        if not marks:
            return []
        start = self._sentence_start.get(index, self.timestamp)
        empty = AudioFrame(np.zeros(0, np.int16), self.sample_rate, start)
        return [SpeechChunk(empty, "", tuple(marks))]


class _Turn:
    """Text of one dialog turn, split into sentences, shared by the tasks that speak it."""

    def __init__(self, text: AsyncIterable[str]) -> None:
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self.carry: str | None = None
        self.ssml = False
        self.ended = False
        self._ready = asyncio.Event()
        self.feeder = asyncio.get_running_loop().create_task(self._feed(text))

    async def _feed(self, text: AsyncIterable[str]) -> None:
        splitter = SentenceSplitter()
        whole: list[str] = []
        async for piece in text:
            if not piece:
                continue
            if not self._ready.is_set():
                self.ssml = piece.lstrip().startswith("<speak")
                self._ready.set()
            if self.ssml:
                whole.append(piece)
                continue
            for sentence in splitter.feed(piece):
                self.pieces.put_nowait(sentence)
        self._ready.set()
        tail = "".join(whole) if self.ssml else splitter.flush()
        if tail:
            self.pieces.put_nowait(tail)
        self.pieces.put_nowait(None)

    async def next(self) -> str | None:
        if self.carry is not None:
            piece, self.carry = self.carry, None
            return piece
        return await self.pieces.get()


class CosyVoiceTTS(TTS):
    """CosyVoice as a :class:`TTS`: one task per turn (or more, if the text pauses > 20 s).

    ``pool_size`` sockets are kept warm and reused after clean tasks. With ``start_ahead``, a
    socket freed by a task at once starts the next one (default voice, plain text), so the next
    turn's first text skips the run-task round trip; one left unused nearly ``text_gap_limit``
    is cancelled and replaced by a fresh one, so the socket stays warm between calls. The
    metrics of the latest stream are in :attr:`last_metrics`, or pass ``metrics=`` to
    :meth:`synthesize`.
    """

    metered = True

    def __init__(
        self,
        settings: DashScopeSettings | None = None,
        params: CosyVoiceParams | None = None,
        *,
        pool_size: int = 1,
        text_gap_limit: float = TEXT_GAP_LIMIT,
        start_ahead: bool = False,
    ) -> None:
        self.settings = settings or DashScopeSettings.from_env()
        self.params = params or CosyVoiceParams()
        self.sample_rate = self.params.sample_rate
        self.text_gap_limit = text_gap_limit
        self.pool = TaskPool(self.settings, pool_size)
        self.start_ahead = start_ahead
        self.last_metrics = StreamMetrics()
        self._background: set[asyncio.Task[None]] = set()
        self._started: dict[TaskConnection, asyncio.TimerHandle] = {}  # tasks started ahead
        self._starting = 0
        self._closing = False

    @property
    def ready_sockets(self) -> int:
        """Sockets a turn can use without a handshake (idle, or with a task started ahead)."""
        return len(self._started) + self.pool.idle

    async def aclose(self) -> None:
        self._closing = True
        await asyncio.gather(*self._background, return_exceptions=True)
        started, self._started = self._started, {}
        for conn, expiry in started.items():
            expiry.cancel()
            await conn.close()
        await self.pool.aclose()

    async def warm(self) -> None:
        """Open the pool's sockets now, each with a task started ahead when enabled."""
        if not self.start_ahead:
            await self.pool.warm()
            return
        await asyncio.gather(*(self._start_next() for _ in range(self.pool.size)))

    async def synthesize(
        self,
        text: AsyncIterable[str],
        voice: str | None = None,
        metrics: StreamMetrics | None = None,
    ) -> AsyncIterator[SpeechChunk]:
        metrics = metrics if metrics is not None else StreamMetrics()
        self.last_metrics = metrics
        reader = CosyVoiceReader(self.sample_rate, metrics)
        turn = _Turn(text)
        try:
            while not turn.ended:
                first = await turn.next()
                if first is None:
                    break
                async with aclosing(self._run_task(turn, first, voice, reader)) as chunks:
                    async for chunk in chunks:
                        yield chunk
        finally:
            turn.feeder.cancel()
            metrics.finished_at = time.monotonic()

    async def _run_task(
        self, turn: _Turn, first: str, voice: str | None, reader: CosyVoiceReader
    ) -> AsyncIterator[SpeechChunk]:
        conn = self._take_started(voice, turn.ssml) or await self.pool.acquire()
        proto = conn.protocol
        sender: asyncio.Task[None] | None = None
        try:
            reader.metrics.tasks += 1
            if proto.reusable:
                await self._start(conn, voice, turn.ssml)
            reader.metrics.start(time.monotonic())
            sender = asyncio.create_task(self._send_text(conn, turn, first))
            while True:
                message = await self._recv(conn)
                if isinstance(message, bytes):
                    proto.receive_binary()
                    chunk = reader.on_audio(message, time.monotonic())
                    if chunk is not None:
                        yield chunk
                    continue
                event = proto.receive(message)
                for chunk in reader.on_event(event):
                    yield chunk
                if event.event == FINISHED:
                    break
            try:
                await sender
            except ConnectionClosed as exc:
                raise closed_error(exc) from None
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
            if proto.reusable or (not proto.failure and conn.ws.close_code is None):
                self._spawn(self._settle(conn, then_start=self.start_ahead))
            else:
                self._spawn(conn.close())

    async def _start(self, conn: TaskConnection, voice: str | None, ssml: bool) -> None:
        """Send ``run-task`` and wait for ``task-started``."""
        proto = conn.protocol
        await conn.ws.send(
            proto.start(
                model=self.params.model,
                task="tts",
                function="SpeechSynthesizer",
                parameters=self.params.parameters(voice, ssml),
            )
        )
        try:
            async with asyncio.timeout(START_TIMEOUT):
                proto.receive(await self._recv_text(conn))
        except TimeoutError:
            proto.connection_lost()
            raise ConnectionLostError("no task-started within 10 s") from None

    def _take_started(self, voice: str | None, ssml: bool) -> TaskConnection | None:
        """A task started ahead, if it has the parameters this turn needs."""
        if ssml or voice not in (None, self.params.voice):
            return None
        while self._started:
            conn, expiry = self._started.popitem()
            expiry.cancel()
            if conn.ws.close_code is None:
                return conn
            self._spawn(conn.close())
        return None

    async def _start_next(self) -> None:
        """Start a task on a pooled socket for the next turn (up to one per pooled socket)."""
        if self._closing or len(self._started) + self._starting >= self.pool.size:
            return
        self._starting += 1
        try:
            conn = await self.pool.acquire()
            try:
                await self._start(conn, None, False)
            except (DashScopeError, ConnectionClosed):
                await conn.close()
                raise
        except (DashScopeError, ConnectionClosed) as exc:
            log.info("CosyVoice task not started ahead: %s", exc)
            return
        finally:
            self._starting -= 1
        loop = asyncio.get_running_loop()
        self._started[conn] = loop.call_later(self.text_gap_limit, self._expire, conn)

    def _expire(self, conn: TaskConnection) -> None:
        """Cancel a task started ahead before the server's text-gap limit fails it, and start
        another (the server's 60 s idle limit never closes a socket that always has a task)."""
        if self._started.pop(conn, None) is not None:
            self._spawn(self._settle(conn, then_start=True))

    async def _send_text(self, conn: TaskConnection, turn: _Turn, piece: str | None) -> None:
        """Send the turn's text into this task until the turn ends, a gap or a limit hits."""
        proto, sent = conn.protocol, 0
        while piece is not None:
            if sent and sent + billed_characters(piece) > TASK_CHAR_LIMIT:
                turn.carry = piece  # the next task speaks it
                break
            for part in [piece] if turn.ssml else split_for_limit(piece):
                await conn.ws.send(proto.continue_task({"text": part}))
            sent += billed_characters(piece)
            try:
                async with asyncio.timeout(self.text_gap_limit):
                    piece = await turn.next()
            except TimeoutError:
                break  # 23 s rule: finish now; later text opens a new task
        else:
            turn.ended = True
        await conn.ws.send(proto.finish())

    async def _settle(self, conn: TaskConnection, then_start: bool = False) -> None:
        """After a clean end, pool the socket; after barge-in, cancel and drain it first, or,
        once ``finish-task`` is out (the service then generates the rest of the turn whatever
        follows), close it at once. ``then_start``: start the next turn's task right away."""
        proto = conn.protocol
        try:
            if not proto.reusable and not proto.can_send_audio:
                proto.connection_lost()  # not pooled: release closes it and opens another
            elif not proto.reusable:
                await conn.ws.send(proto.finish(cancel=True))
                async with asyncio.timeout(CANCEL_DRAIN_TIMEOUT):
                    while not proto.reusable:
                        message = await conn.ws.recv()
                        if isinstance(message, str):
                            proto.receive(message)
        except (DashScopeError, ConnectionClosed, TimeoutError):
            proto.connection_lost()
        await self.pool.release(conn)
        if then_start:
            await self._start_next()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _recv(conn: TaskConnection) -> str | bytes:
        try:
            return await conn.ws.recv()
        except ConnectionClosed as exc:
            conn.protocol.connection_lost()
            raise closed_error(exc) from None

    async def _recv_text(self, conn: TaskConnection) -> str:
        message = await self._recv(conn)
        if isinstance(message, bytes):
            conn.protocol.connection_lost()
            raise ConnectionLostError("binary frame before task-started")
        return message


__all__ = ["CosyVoiceParams", "CosyVoiceReader", "CosyVoiceTTS", "split_for_limit"]
