"""Qwen3-ASR-Flash realtime as an :class:`ASR`: base64 audio in, text + stash snapshots out.

With server VAD (default) every utterance becomes one item: ``.text`` events are snapshots
(``text`` settled + ``stash`` still changing) and ``.completed`` is the final. In manual mode
(``vad=False``) the stream commits at close, yielding one final for everything heard.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge.speech.base import ASR, Transcript
from bridge.speech.dashscope.asr import QueuedASRStream
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.realtime_protocol import RealtimeClient, b64, encode
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.transport import open_realtime

TRANSCRIPTION = "conversation.item.input_audio_transcription."


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


class QwenASRStream(QueuedASRStream):
    asr: QwenASR

    def __init__(self, asr: QwenASR, ws: ClientConnection, client: RealtimeClient) -> None:
        self.ws, self.client = ws, client
        super().__init__(asr)
        # The receiver task first runs at the caller's next await, after the reader exists.
        self.reader = QwenASRReader(self.metrics)

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):  # the receiver reports why
            await self.ws.send(encode("input_audio_buffer.append", audio=b64(data)))

    async def _finish(self) -> None:
        await self.ws.send(encode("session.finish"))

    async def _release(self) -> None:
        await self.ws.close()

    async def _read(self) -> None:
        while not self.client.finished:
            event = self.client.receive(await self.ws.recv())
            transcript = self.reader.on_event(event, time.monotonic())
            if transcript is not None and transcript.text:
                self._queue.put_nowait(transcript)


__all__ = ["QwenASR", "QwenASRParams", "QwenASRReader", "QwenASRStream"]
