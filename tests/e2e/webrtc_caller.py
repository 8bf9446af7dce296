"""A scripted WebRTC caller built on aiortc: speaks prepared audio, records what the bot says.

It is a real, independent WebRTC peer (its own ICE, DTLS, SRTP and Opus), driven by the test:
``say()`` queues speech that the outbound track plays at real-time pace, and every received bot
frame is kept with its arrival time so tests can check what a caller would have heard, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

if TYPE_CHECKING:
    from bridge.server import Bridge

RATE = 48000
FRAME = 960  # 20 ms


class ScriptedMicrophone(MediaStreamTrack):
    """Silence, except when the test asks it to say something."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.int16)
        self._start: float | None = None
        self._sent = 0
        self.speech_started_at: list[float] = []  # when each spoken stretch's first frame left
        self.speech_ended_at: list[float] = []  # when each spoken stretch's last frame left
        self._was_silent = True

    def say(self, samples: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, samples.astype(np.int16)])

    @property
    def speaking(self) -> bool:
        return self._pending.size > 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._sent / RATE - time.monotonic()))
        chunk = self._pending[:FRAME]
        self._pending = self._pending[FRAME:]
        if chunk.size and self._was_silent:
            self.speech_started_at.append(time.monotonic())
        if chunk.size and self._pending.size == 0:
            self.speech_ended_at.append(time.monotonic())
        self._was_silent = chunk.size == 0
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


@dataclass
class ReceivedAudio:
    """Bot audio as the caller received it: mono 48 kHz samples and per-frame arrival times."""

    chunks: list[np.ndarray] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def loud_frames(self, threshold: float = 300.0) -> list[float]:
        """Arrival times of frames whose RMS is above ``threshold``."""
        return [
            t
            for t, c in zip(self.arrivals, self.chunks, strict=True)
            if c.size and np.sqrt(np.mean(c.astype(np.float64) ** 2)) > threshold
        ]


class WebRtcCaller:
    """Call the bridge's ``/api/webrtc/offer`` and hold the call."""

    def __init__(self, base_url: str, dialplan: str | None = None) -> None:
        self.base_url = base_url
        self.dialplan = dialplan
        self.mic = ScriptedMicrophone()
        self.received = ReceivedAudio()
        self.events: list[dict[str, object]] = []
        self.call_id = ""
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._reader: asyncio.Task[None] | None = None
        self._event_arrived = asyncio.Event()

    async def connect(self) -> None:
        channel = self._pc.createDataChannel("events")

        @channel.on("message")
        def on_message(message: str) -> None:
            self.events.append(json.loads(message))
            self._event_arrived.set()

        @self._pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.create_task(self._read(track))

        self._pc.addTrack(self.mic)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        body: dict[str, object] = {"sdp": self._pc.localDescription.sdp, "type": "offer"}
        if self.dialplan:
            body["dialplan"] = self.dialplan
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.base_url}/api/webrtc/offer", json=body) as response,
        ):
            answer = await response.json()
            if response.status != 200:
                raise RuntimeError(f"offer refused: {response.status} {answer}")
        self.call_id = str(answer["call_id"])
        await self._pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                data = frame.to_ndarray().reshape(-1)[:: len(frame.layout.channels)]
                self.received.chunks.append(data.astype(np.int16))
                self.received.arrivals.append(time.monotonic())
        except MediaStreamError:
            return

    async def wait_event(self, predicate: object, timeout: float) -> dict[str, object]:
        """The first event (already received or coming) for which ``predicate(event)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if predicate(event):  # type: ignore[operator]
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event in {timeout} s; got {self.events}")
            self._event_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_arrived.wait(), remaining)

    async def say_into_greeting(self, speech: np.ndarray, after: float = 1.5) -> None:
        """Once the call is up and the bot is heard, wait ``after`` s and say ``speech`` (a
        barge-in while the greeting plays)."""
        await self.wait_event(lambda e: e.get("type") == "state", timeout=60)
        while not self.received.loud_frames():
            await asyncio.sleep(0.05)
        await asyncio.sleep(after)
        self.mic.say(speech)

    def bot_finals(self) -> list[dict[str, object]]:
        return [e for e in self.events if e.get("who") == "bot" and e.get("final")]

    async def close(self) -> None:
        await self._pc.close()
        if self._reader is not None:
            self._reader.cancel()


def is_bot_final(event: dict[str, object]) -> bool:
    """A bot turn's closing transcript event (carries ``interrupted`` and the heard text)."""
    return event.get("who") == "bot" and bool(event.get("final"))


async def wait_for_call_record(records: Path, call_id: str, timeout: float = 10) -> Path:
    """The call's record folder, once its ``call.json`` has been closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in records.glob(f"*{call_id}*"):
            meta = folder / "call.json"
            if meta.is_file() and json.loads(meta.read_text()).get("end_reason"):
                return folder
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no call record for {call_id} in {records}")


async def call_record(
    bridge: Bridge, call_id: str, timeout: float = 10
) -> tuple[Path, list[dict], dict]:
    """The call's finished record in the bridge's records dir: its folder, the lines of its
    ``transcript.jsonl`` and its ``call.json``."""
    folder = await wait_for_call_record(Path(bridge.config.records.dir), call_id, timeout)
    lines = [json.loads(x) for x in (folder / "transcript.jsonl").read_text().splitlines()]
    return folder, lines, json.loads((folder / "call.json").read_text())
