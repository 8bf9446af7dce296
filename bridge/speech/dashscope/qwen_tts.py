"""Qwen-TTS realtime (``qwen3-tts-flash-realtime``, instruct, VC/VD models) as a :class:`TTS`.

One session per turn (realtime sockets are not reused). ``server_commit`` mode appends text as
it arrives and lets the server segment it; ``commit`` mode appends whole sentences and commits
each, so every response voices exactly one known sentence.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge.media.frame import AudioFrame
from bridge.speech.base import TTS, SpeechChunk
from bridge.speech.dashscope.errors import ConnectionLostError
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.realtime_protocol import encode, unb64
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.text import SentenceSplitter
from bridge.speech.dashscope.transport import closed_error, open_realtime

MODES = ("server_commit", "commit")


@dataclass(frozen=True, slots=True)
class QwenTTSParams:
    model: str = "qwen3-tts-flash-realtime"
    voice: str = "Cherry"
    mode: str = "server_commit"
    language_type: str = "Auto"
    sample_rate: int = 24000
    instructions: str | None = None  # instruct models only
    optimize_instructions: bool | None = None
    speech_rate: float | None = None
    volume: int | None = None
    pitch_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")

    def session(self, voice: str | None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "voice": voice or self.voice,
            "mode": self.mode,
            "language_type": self.language_type,
            "response_format": "pcm",
            "sample_rate": self.sample_rate,
        }
        optional = {
            "instructions": self.instructions,
            "optimize_instructions": self.optimize_instructions,
            "speech_rate": self.speech_rate,
            "volume": self.volume,
            "pitch_rate": self.pitch_rate,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        config.update(self.extra)
        return config


class QwenTTSReader:
    """Sans-I/O: realtime events → speech chunks; the text of each response goes on its first
    chunk (in ``server_commit`` mode the server's segmentation is assumed to follow ours)."""

    def __init__(self, sample_rate: int, metrics: StreamMetrics) -> None:
        self.sample_rate, self.metrics = sample_rate, metrics
        self.texts: deque[str] = deque()
        self.timestamp = 0
        self._pending = ""

    def on_event(self, event: dict[str, Any], now: float) -> SpeechChunk | None:
        kind = event["type"]
        if kind == "response.created":
            self._pending = self.texts.popleft() if self.texts else ""
        elif kind == "response.done":
            usage = (event.get("response") or {}).get("usage") or {}
            self.metrics.billed_characters += int(usage.get("characters") or 0)
        elif kind == "response.audio.delta":
            data = unb64(event["delta"])
            frame = AudioFrame.from_bytes(
                data[: len(data) // 2 * 2], self.sample_rate, self.timestamp
            )
            self.timestamp = frame.end_timestamp
            self.metrics.first_packet(now)
            self.metrics.audio_seconds += frame.duration
            text, self._pending = self._pending, ""
            return SpeechChunk(frame, text)
        return None


class QwenTTS(TTS):
    metered = True

    def __init__(
        self, settings: DashScopeSettings | None = None, params: QwenTTSParams | None = None
    ) -> None:
        self.settings = settings or DashScopeSettings.from_env()
        self.params = params or QwenTTSParams()
        self.sample_rate = self.params.sample_rate
        self.last_metrics = StreamMetrics()

    async def synthesize(
        self,
        text: AsyncIterable[str],
        voice: str | None = None,
        metrics: StreamMetrics | None = None,
    ) -> AsyncIterator[SpeechChunk]:
        metrics = metrics if metrics is not None else StreamMetrics()
        self.last_metrics = metrics
        ws, client = await open_realtime(
            self.settings, self.params.model, self.params.session(voice)
        )
        reader = QwenTTSReader(self.sample_rate, metrics)
        metrics.tasks = 1
        sender = asyncio.create_task(self._send(ws, text, reader, metrics))
        try:
            while not client.finished:
                try:
                    event = client.receive(await ws.recv())
                except ConnectionClosed as exc:
                    raise closed_error(exc) from None
                chunk = reader.on_event(event, time.monotonic())
                if chunk is not None:
                    yield chunk
            if sender.done() and sender.exception() is not None:
                raise ConnectionLostError(f"sending text failed: {sender.exception()}")
        finally:
            sender.cancel()
            metrics.finished_at = time.monotonic()
            await ws.close()

    async def _send(
        self,
        ws: ClientConnection,
        text: AsyncIterable[str],
        reader: QwenTTSReader,
        metrics: StreamMetrics,
    ) -> None:
        splitter = SentenceSplitter()
        commit = self.params.mode == "commit"

        async def send(sentence: str) -> None:
            metrics.start(time.monotonic())
            reader.texts.append(sentence.strip())
            await ws.send(encode("input_text_buffer.append", text=sentence))
            if commit:
                await ws.send(encode("input_text_buffer.commit"))

        async for piece in text:
            for sentence in splitter.feed(piece):
                await send(sentence)
        tail = splitter.flush()
        if tail:
            await send(tail)
        await ws.send(encode("session.finish"))


__all__ = ["QwenTTS", "QwenTTSParams", "QwenTTSReader"]
