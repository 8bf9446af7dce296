"""Qwen-Omni realtime (``qwen3-omni-flash-realtime``, ``qwen-omni-turbo-realtime``): one session
that listens to the caller and answers in speech, turn taking by the server's VAD.

:class:`OmniReader` (sans-I/O) turns server events into what a call acts on, and holds the
answer audio not played yet. When the caller starts talking (``speech_started``) that audio is
dropped at once; the server then ends the answer with ``response.done``, status ``cancelled`` or
``incomplete`` (the reference leaves which open, so both are accepted). :class:`OmniSession` is
the asyncio adapter: push caller frames, read events, pull answer frames.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge.media.frame import AudioFrame
from bridge.speech.dashscope.errors import DashScopeError, task_failed
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.realtime_protocol import RealtimeClient, b64, encode, unb64
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.transport import closed_error, open_realtime

INPUT_RATE = 16000
OUTPUT_RATE = 24000
ENDED = ("completed", "cancelled", "incomplete")  # response.done statuses of a usable session
PLAYBACK_LIMIT_S = 60.0  # answer audio held for playout; beyond it the oldest is dropped


@dataclass(frozen=True, slots=True)
class OmniParams:
    model: str = "qwen3-omni-flash-realtime"
    voice: str = "Cherry"
    instructions: str | None = None  # the system prompt
    vad_threshold: float = 0.5
    silence_duration_ms: int = 800
    extra: dict[str, Any] = field(default_factory=dict)

    def session(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "modalities": ["text", "audio"],
            "voice": self.voice,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm24" if "flash" in self.model else "pcm16",
            "turn_detection": {
                "type": "server_vad",
                "threshold": self.vad_threshold,
                "silence_duration_ms": self.silence_duration_ms,
            },
        }
        if self.instructions:
            config["instructions"] = self.instructions
        config.update(self.extra)
        return config


@dataclass(frozen=True, slots=True)
class Heard:
    """What the caller said (the service's transcription of one utterance)."""

    text: str


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller started talking: queued answer audio has been dropped."""

    dropped_s: float


@dataclass(frozen=True, slots=True)
class AnswerEnded:
    response_id: str
    status: str  # completed, cancelled or incomplete
    text: str  # the answer's transcript (as generated, not necessarily as heard)


OmniEvent = Heard | BargeIn | AnswerEnded


class OmniReader:
    """Sans-I/O: server events → :data:`OmniEvent`s, answer audio into :attr:`playback`."""

    def __init__(self, metrics: StreamMetrics, limit_s: float = PLAYBACK_LIMIT_S) -> None:
        self.metrics = metrics
        self.playback: deque[AudioFrame] = deque()
        self.limit = int(limit_s * OUTPUT_RATE)
        self.queued = 0  # samples in playback
        self.dropped = 0  # samples dropped because playback was full
        self.timestamp = 0
        self.texts: dict[str, str] = {}
        self.answering = ""  # the response being generated
        self.cut: set[str] = set()  # responses talked over: their late audio is dropped too

    def on_event(self, event: dict[str, Any], now: float) -> list[OmniEvent]:
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started":
            flushed = self.queued / OUTPUT_RATE
            self.playback.clear()
            self.queued = 0
            if self.answering:
                self.cut.add(self.answering)
            return [BargeIn(flushed)]
        if kind == "conversation.item.input_audio_transcription.completed":
            text = str(event.get("transcript", "")).strip()
            return [Heard(text)] if text else []
        if kind == "response.created":
            self.answering = str((event.get("response") or {}).get("id", ""))
            self.metrics.start(now)
        elif kind == "response.audio_transcript.delta":
            response = str(event.get("response_id", ""))
            self.texts[response] = self.texts.get(response, "") + str(event.get("delta", ""))
        elif kind == "response.audio.delta":
            if event.get("response_id") not in self.cut:
                self._queue(unb64(event["delta"]), now)
        elif kind == "response.done":
            response = event.get("response") or {}
            status, response_id = str(response.get("status", "")), str(response.get("id", ""))
            self.cut.discard(response_id)
            self.answering = ""
            if status not in ENDED:
                raise task_failed(status or "Unknown", f"Omni response ended with {status!r}")
            return [AnswerEnded(response_id, status, self.texts.pop(response_id, ""))]
        return []

    def pop(self) -> AudioFrame | None:
        """The next piece of answer audio to play, if any."""
        if not self.playback:
            return None
        frame = self.playback.popleft()
        self.queued -= frame.num_samples
        return frame

    def _queue(self, data: bytes, now: float) -> None:
        frame = AudioFrame.from_bytes(data[: len(data) // 2 * 2], OUTPUT_RATE, self.timestamp)
        self.timestamp = frame.end_timestamp
        self.metrics.first_packet(now)
        self.metrics.audio_seconds += frame.duration
        self.playback.append(frame)
        self.queued += frame.num_samples
        while self.queued > self.limit:
            oldest = self.playback.popleft()
            self.queued -= oldest.num_samples
            self.dropped += oldest.num_samples


class OmniSession:
    """One Omni conversation: ``await open()``, ``push()`` caller audio (16 kHz), iterate
    ``events()``, take answer audio (24 kHz) with ``reader.pop()``, ``await close()``."""

    def __init__(
        self, settings: DashScopeSettings | None = None, params: OmniParams | None = None
    ) -> None:
        self.settings = settings or DashScopeSettings.from_env()
        self.params = params or OmniParams()
        self.metrics = StreamMetrics()
        self.reader = OmniReader(self.metrics)
        self._ws: ClientConnection | None = None
        self._client = RealtimeClient()

    async def open(self) -> None:
        self._ws, self._client = await open_realtime(
            self.settings, self.params.model, self.params.session()
        )
        self.metrics.tasks = 1

    async def push(self, frame: AudioFrame) -> None:
        if frame.sample_rate != INPUT_RATE:
            raise ValueError(f"Omni takes {INPUT_RATE} Hz audio, got {frame.sample_rate} Hz")
        await self._socket().send(encode("input_audio_buffer.append", audio=b64(frame.to_bytes())))

    async def events(self) -> AsyncIterator[OmniEvent]:
        """Events until the session is finished (after :meth:`close`)."""
        ws = self._socket()
        while not self._client.finished:
            try:
                event = self._client.receive(await ws.recv())
            except ConnectionClosed as exc:
                raise closed_error(exc) from None
            for item in self.reader.on_event(event, time.monotonic()):
                yield item

    async def close(self) -> None:
        """Ask the server to finish; :meth:`events` ends once it has."""
        with contextlib.suppress(ConnectionClosed):  # events() reports why
            await self._socket().send(encode("session.finish"))
        self.metrics.finished_at = time.monotonic()

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def _socket(self) -> ClientConnection:
        if self._ws is None:
            raise DashScopeError("Omni session is not open")
        return self._ws


__all__ = [
    "AnswerEnded",
    "BargeIn",
    "Heard",
    "OmniEvent",
    "OmniParams",
    "OmniReader",
    "OmniSession",
]
