"""Asyncio adapter that runs one task-protocol connection: socket, timers, engines, faults."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from bridge.emulator import task_server as ts
from bridge.emulator.audio import convert, frames, wav_header
from bridge.media.frame import AudioFrame
from bridge.speech.base import ASRStream, text_once

if TYPE_CHECKING:
    from bridge.emulator.server import Emulator

log = logging.getLogger(__name__)

TICK = 0.25


def spread_words(text: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Word entries spread evenly over a span (the engines give no word times)."""
    tokens = text.split()
    span = max(0, end_ms - start_ms) / max(1, len(tokens))
    words, at = [], 0
    for i, token in enumerate(tokens):
        begin = text.index(token, at)
        at = begin + len(token)
        words.append(
            {
                "text": token,
                "begin_index": begin,
                "end_index": at,
                "begin_time": int(start_ms + i * span),
                "end_time": int(start_ms + (i + 1) * span),
            }
        )
    return words


class TaskConnection:
    def __init__(self, emulator: Emulator, request: web.Request, ws: web.WebSocketResponse):
        self.emulator = emulator
        self.request = request
        self.ws = ws
        self.proto = ts.TaskServer(time.monotonic(), emulator.timers, emulator.words_in_end)
        self.lock = asyncio.Lock()
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.speech: dict[str, asyncio.Queue[ts.Speak | None]] = {}
        self.streams: dict[str, ASRStream] = {}
        self.feeds: dict[str, asyncio.Queue[AudioFrame | None]] = {}
        self.frames = 0
        self.background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        ticker = asyncio.create_task(self._tick())
        try:
            async for msg in self.ws:
                now = time.monotonic()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self.execute(self.proto.receive_text(msg.data, now))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await self.execute(self.proto.receive_binary(msg.data, now))
                    if self.proto.state is not ts.State.CLOSED:
                        await self._count_frame()
        finally:
            ticker.cancel()
            tasks = [ticker, *self.workers.values(), *self.background]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in self.streams.values():
                await _close_quietly(stream)

    async def execute(self, actions: list[ts.Action]) -> None:
        """Run actions in order; consecutive sends go out under one lock so that an event and
        its audio frame are never split by another sender."""
        batch: list[ts.Send | ts.Close] = []
        for action in [*actions, None]:
            if isinstance(action, ts.Send | ts.Close):
                batch.append(action)
                continue
            if batch:
                async with self.lock:
                    for send in batch:
                        await self._do(send)
                batch = []
            if action is not None:
                await self._do(action)

    async def _do(self, action: ts.Action) -> None:
        match action:
            case ts.Send(data):
                if not self.ws.closed:
                    with_bytes = isinstance(data, bytes)
                    await (self.ws.send_bytes(data) if with_bytes else self.ws.send_str(data))
            case ts.Close(code, reason):
                await self.ws.close(code=code, message=reason.encode())
            case ts.StartSynthesis():
                self.emulator.tasks_started += 1
                queue: asyncio.Queue[ts.Speak | None] = asyncio.Queue()
                self.speech[action.task_id] = queue
                self._work(action.task_id, self._synthesize(action, queue))
            case ts.Speak(task_id):
                if task_id in self.speech:
                    self.speech[task_id].put_nowait(action)
            case ts.EndSynthesis(task_id, cancel):
                if cancel:
                    self._abandon(task_id)
                    await self.execute(self.proto.on_engine_done(task_id, time.monotonic()))
                elif task_id in self.speech:
                    self.speech[task_id].put_nowait(None)
            case ts.StartRecognition():
                self.emulator.tasks_started += 1
                stream = await self.emulator.asr.open_stream(action.language)
                self.streams[action.task_id] = stream
                feed: asyncio.Queue[AudioFrame | None] = asyncio.Queue()
                self.feeds[action.task_id] = feed
                self._work(action.task_id, self._read_results(action.task_id, stream))
                self._spawn(feed_engine(stream, feed, self.emulator.asr_speed))
            case ts.Audio(task_id, samples, rate):
                if task_id in self.feeds:
                    pcm = convert(samples, rate, self.emulator.asr.sample_rate)
                    self.feeds[task_id].put_nowait(AudioFrame(pcm, self.emulator.asr.sample_rate))
            case ts.EndRecognition(task_id):
                if task_id in self.feeds:
                    self.feeds.pop(task_id).put_nowait(None)
            case ts.Abandon(task_id):
                self._abandon(task_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _work(self, task_id: str, coro: Any) -> None:
        self.workers[task_id] = asyncio.create_task(coro)

    def _abandon(self, task_id: str) -> None:
        self.speech.pop(task_id, None)
        self.feeds.pop(task_id, None)
        worker = self.workers.pop(task_id, None)
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        stream = self.streams.pop(task_id, None)
        if stream is not None:
            self._spawn(_close_quietly(stream))

    async def _tick(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(TICK)
            await self.execute(self.proto.tick(time.monotonic()))

    async def _count_frame(self) -> bool:
        """Apply frame-count faults; True when the connection was broken on purpose."""
        self.frames += 1
        faults = self.emulator.faults
        if faults.drop_after_frames is not None and self.frames >= faults.drop_after_frames:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            self.proto.state = ts.State.CLOSED
            return True
        if faults.fail_after_frames is not None and self.frames >= faults.fail_after_frames:
            await self.execute(self.proto.fail(faults.error_code, faults.error_message))
            return True
        return False

    async def _synthesize(self, start: ts.StartSynthesis, queue: asyncio.Queue) -> None:
        engine = self.emulator.tts
        faults = self.emulator.faults
        gain = float(start.parameters.get("volume", 50)) / 50.0
        words_on = bool(start.parameters.get("word_timestamp_enabled"))
        first = True
        while (speak := await queue.get()) is not None:
            await self.execute(
                self.proto.on_sentence_begin(
                    start.task_id, speak.index, speak.text, time.monotonic()
                )
            )
            sent_ms = 0.0
            async for chunk in engine.synthesize(text_once(speak.text)):
                pcm = convert(chunk.audio.samples, engine.sample_rate, start.sample_rate, gain)
                for piece in frames(pcm, start.sample_rate):
                    data = piece.tobytes()
                    if first:
                        await asyncio.sleep(faults.first_packet_delay)
                        if start.format == "wav":
                            data = wav_header(start.sample_rate) + data
                        first = False
                    began = time.monotonic()
                    await self.execute(
                        self.proto.on_sentence_audio(start.task_id, speak.index, data, began)
                    )
                    sent_ms += 1000.0 * piece.size / start.sample_rate
                    if await self._count_frame():
                        return
                    if faults.rtf:
                        pace = faults.rtf * piece.size / start.sample_rate
                        await asyncio.sleep(max(0.0, pace - (time.monotonic() - began)))
            words = spread_words(speak.text, 0, int(sent_ms)) if words_on else []
            await self.execute(
                self.proto.on_sentence_end(
                    start.task_id, speak.index, speak.text, words, time.monotonic()
                )
            )
        self.workers.pop(start.task_id, None)
        await self.execute(self.proto.on_engine_done(start.task_id, time.monotonic()))

    async def _read_results(self, task_id: str, stream: ASRStream) -> None:
        first = True
        async for transcript in stream.results():
            if first and transcript.text:
                await asyncio.sleep(self.emulator.faults.first_packet_delay)
                first = False
            await self.execute(self.proto.on_transcript(task_id, transcript))
        self.workers.pop(task_id, None)
        self.streams.pop(task_id, None)
        await self.execute(self.proto.on_engine_done(task_id, time.monotonic()))


async def feed_engine(
    stream: ASRStream, feed: asyncio.Queue[AudioFrame | None], speed: float
) -> None:
    """Push audio into the engine no faster than ``speed`` × real time, as the service hears
    it; clients may send a file at once, but streaming engines keep only a bounded backlog."""
    clock = asyncio.get_running_loop().time
    started, fed = clock(), 0.0
    lead = 0.5  # seconds of audio the engine may have ahead of the wall clock
    while (frame := await feed.get()) is not None:
        ahead = fed / speed - (clock() - started)
        if ahead > lead:
            await asyncio.sleep(ahead - lead)
        stream.push(frame)
        fed += frame.duration
    await stream.close()


async def _close_quietly(stream: ASRStream) -> None:
    try:
        await stream.close()
    except Exception:  # the stream is being thrown away; its failure changes nothing
        log.debug("ASR stream close failed", exc_info=True)
