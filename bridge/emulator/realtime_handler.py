"""Asyncio adapter that runs one realtime-protocol session: socket, engines, faults."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from bridge.emulator import realtime_server as rs
from bridge.emulator.audio import convert, frames
from bridge.emulator.task_handler import feed_engine
from bridge.emulator.task_server import Audio, Close, Send
from bridge.media.frame import AudioFrame
from bridge.speech.base import ASRStream, text_once

if TYPE_CHECKING:
    from bridge.emulator.server import Emulator


class RealtimeConnection:
    def __init__(
        self, emulator: Emulator, request: web.Request, ws: web.WebSocketResponse, model: str
    ) -> None:
        self.emulator, self.request, self.ws = emulator, request, ws
        self.proto = rs.RealtimeServer(model, emulator.omni_reply)
        self.lock = asyncio.Lock()
        self.responses: asyncio.Queue[rs.Respond] = asyncio.Queue()
        self.current: asyncio.Task[None] | None = None
        self.feed: asyncio.Queue[AudioFrame | None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.frames = 0
        self.first = True

    async def run(self) -> None:
        self._spawn(self._speak())
        try:
            await self.execute(self.proto.start())
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT or msg.type == aiohttp.WSMsgType.BINARY:
                    await self.execute(self.proto.receive(msg.data))
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def execute(self, actions: list[rs.Action]) -> None:
        for action in actions:
            match action:
                case Send(data):
                    async with self.lock:
                        if not self.ws.closed:
                            await self.ws.send_str(str(data))
                case Close(code, reason):
                    await self.ws.close(code=code, message=reason.encode())
                case rs.Respond():
                    self.responses.put_nowait(action)
                case rs.CancelResponse():
                    if self.current is not None:
                        self.current.cancel()
                case rs.OpenRecognition(language):
                    stream = await self.emulator.asr.open_stream(language)
                    self.feed = asyncio.Queue()
                    self._spawn(feed_engine(stream, self.feed, self.emulator.asr_speed))
                    self._spawn(self._listen(stream))
                case Audio(_, samples, rate):
                    if self.feed is not None:
                        pcm = convert(samples, rate, self.emulator.asr.sample_rate)
                        self.feed.put_nowait(AudioFrame(pcm, self.emulator.asr.sample_rate))
                    await self._count_frame()
                case rs.EndRecognition():
                    if self.feed is not None:
                        self.feed.put_nowait(None)
                        self.feed = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _count_frame(self) -> bool:
        self.frames += 1
        faults = self.emulator.faults
        if faults.drop_after_frames is not None and self.frames >= faults.drop_after_frames:
            if self.request.transport is not None:
                self.request.transport.abort()
            self.proto.closed = True
            return True
        if faults.fail_after_frames is not None and self.frames >= faults.fail_after_frames:
            await self.execute(self.proto.fail(faults.error_code, faults.error_message))
            return True
        return False

    async def _speak(self) -> None:
        while True:
            response = await self.responses.get()
            self.current = asyncio.create_task(self._respond(response))
            try:
                await self.current
                status = "completed"
            except asyncio.CancelledError:
                if not self.current.cancelled():
                    raise
                status = "cancelled"
            if self.proto.closed:
                return
            await self.execute(self.proto.on_response_end(response, status))

    async def _respond(self, response: rs.Respond) -> None:
        engine, faults, session = self.emulator.tts, self.emulator.faults, self.proto.session
        rate = int(session.get("sample_rate") or 24000)
        gain = float(session.get("volume", 50)) / 50.0
        await self.execute(self.proto.on_response_begin(response))
        if not response.audio:
            return
        async for chunk in engine.synthesize(text_once(response.text)):
            pcm = convert(chunk.audio.samples, engine.sample_rate, rate, gain)
            for piece in frames(pcm, rate):
                if self.first:
                    await asyncio.sleep(faults.first_packet_delay)
                    self.first = False
                began = time.monotonic()
                await self.execute(self.proto.on_response_audio(response, piece.tobytes()))
                if await self._count_frame():
                    await asyncio.Event().wait()  # the session is over; wait to be cancelled
                if faults.rtf:
                    pace = faults.rtf * piece.size / rate
                    await asyncio.sleep(max(0.0, pace - (time.monotonic() - began)))

    async def _listen(self, stream: ASRStream) -> None:
        first = True
        async for transcript in stream.results():
            if first and transcript.text:
                await asyncio.sleep(self.emulator.faults.first_packet_delay)
                first = False
            await self.execute(self.proto.on_transcript(transcript))
        await self.execute(self.proto.on_recognition_done())
