"""Qwen3-ASR-Flash realtime as an :class:`ASR`: base64 audio in, text + stash snapshots out.

With server VAD (default) every utterance becomes one item: ``.text`` events are snapshots
(``text`` settled + ``stash`` still changing) and ``.completed`` is the final. In manual mode
(``vad=False``) the stream commits at close, yielding one final for everything heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge.media.frame import AudioFrame
from bridge.speech.base import ASR, ASRStream, Transcript
from bridge.speech.dashscope.asr import AudioBatcher
from bridge.speech.dashscope.errors import DashScopeError
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.realtime_protocol import RealtimeClient, b64, encode
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.transport import closed_error, open_realtime

TRANSCRIPTION = "conversation.item.input_audio_transcription."
FINISH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class QwenASRParams:
    model: str = "qwen3-asr-flash-realtime"
    sample_rate: int = 16000  # 16000 or 8000 (upsampled by the server)
    vad: bool = True
    vad_threshold: float = 0.2
    silence_duration_ms: int = 800
    corpus: str | None = None  # free-text context biasing

    def session(self, language: str) -> dict[str, Any]:
        transcription: dict[str, Any] = {"language": language}
        if self.corpus:
            transcription["corpus"] = {"text": self.corpus}
        turn = {
            "type": "server_vad",
            "threshold": self.vad_threshold,
            "silence_duration_ms": self.silence_duration_ms,
        }
        return {
            "input_audio_format": "pcm",
            "sample_rate": self.sample_rate,
            "input_audio_transcription": transcription,
            "turn_detection": turn if self.vad else None,
        }


class QwenASRReader:
    """Sans-I/O: realtime events → transcripts, with times from the VAD events."""

    def __init__(self, metrics: StreamMetrics) -> None:
        self.metrics = metrics
        self.starts: dict[str, int] = {}
        self.ends: dict[str, int] = {}

    def on_event(self, event: dict[str, Any], now: float) -> Transcript | None:
        kind, item = event["type"], str(event.get("item_id", ""))
        if kind == "input_audio_buffer.speech_started":
            self.starts[item] = int(event.get("audio_start_ms", 0))
        elif kind == "input_audio_buffer.speech_stopped":
            self.ends[item] = int(event.get("audio_end_ms", 0))
        elif kind == TRANSCRIPTION + "text":
            snapshot = f"{event.get('text', '')}{event.get('stash', '')}".strip()
            if snapshot:
                self.metrics.first_packet(now)
                return Transcript(snapshot, False, self.starts.get(item, 0))
        elif kind == TRANSCRIPTION + "completed":
            self.metrics.first_packet(now)
            start, end = self.starts.pop(item, 0), self.ends.pop(item, 0)
            return Transcript(str(event.get("transcript", "")).strip(), True, start, end)
        return None


class QwenASR(ASR):
    def __init__(
        self,
        settings: DashScopeSettings | None = None,
        params: QwenASRParams | None = None,
        *,
        keepalive_after: float = 1.0,
    ) -> None:
        self.settings = settings or DashScopeSettings.from_env()
        self.params = params or QwenASRParams()
        self.sample_rate = self.params.sample_rate
        self.keepalive_after = keepalive_after

    async def open_stream(self, language: str = "en") -> QwenASRStream:
        ws, client = await open_realtime(
            self.settings, self.params.model, self.params.session(language)
        )
        return QwenASRStream(self, ws, client)


class QwenASRStream(ASRStream):
    def __init__(self, asr: QwenASR, ws: ClientConnection, client: RealtimeClient) -> None:
        self.asr, self.ws, self.client = asr, ws, client
        self.metrics = StreamMetrics(tasks=1)
        self.batcher = AudioBatcher(
            asr.sample_rate, self.metrics, keepalive_after=asr.keepalive_after
        )
        self.reader = QwenASRReader(self.metrics)
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._error: DashScopeError | None = None
        self._closed = False
        self._receiver = asyncio.create_task(self._receive())
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def push(self, frame: AudioFrame) -> None:
        if frame.sample_rate != self.asr.sample_rate:
            raise ValueError(f"expected {self.asr.sample_rate} Hz audio, got {frame.sample_rate}")
        if not self._closed:
            for data in self.batcher.push(frame.to_bytes(), time.monotonic()):
                await self._append(data)

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
            rest = self.batcher.flush()
            if rest:
                await self._append(rest)
            await self.ws.send(encode("session.finish"))
            async with asyncio.timeout(FINISH_TIMEOUT):
                await asyncio.shield(self._receiver)
        except (ConnectionClosed, TimeoutError):
            self._receiver.cancel()
            self._queue.put_nowait(None)
        self.metrics.finished_at = time.monotonic()
        await self.ws.close()

    async def _append(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):  # the receiver reports why
            await self.ws.send(encode("input_audio_buffer.append", audio=b64(data)))

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            frame = self.batcher.keepalive(time.monotonic())
            if frame is not None:
                await self._append(frame)

    async def _receive(self) -> None:
        try:
            while not self.client.finished:
                event = self.client.receive(await self.ws.recv())
                transcript = self.reader.on_event(event, time.monotonic())
                if transcript is not None and transcript.text:
                    self._queue.put_nowait(transcript)
        except ConnectionClosed as exc:
            self._error = closed_error(exc)
        except DashScopeError as exc:
            self._error = exc
        finally:
            self._keepalive.cancel()
            self._queue.put_nowait(None)


__all__ = ["QwenASR", "QwenASRParams", "QwenASRReader", "QwenASRStream"]
