"""aiortc glue for one browser call: the bot's outbound track and the caller's inbound track.

aiortc pulls outbound frames as fast as ``recv()`` returns them, so the track itself is the
pacing point: it waits for the next tick of a drift-free 20 ms clock, then asks the call for
exactly one frame. While the bot is silent, speech arriving between ticks goes out at once on a
fresh grid, so a turn's first frame does not wait for the silent grid's next tick. Inbound
frames arrive decoded (Opus → 48 kHz, often stereo) and are reduced to mono before the call
sees them.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from bridge.call import Call
from bridge.media.frame import AudioFrame
from bridge.media.playout import PlayoutClock

log = logging.getLogger(__name__)

# Opus runs at 48 kHz; handing aiortc frames at that rate spares its encoder a resample.
WEBRTC_RATE = 48000


class BotAudioTrack(MediaStreamTrack):
    """The bot's voice, paced by the playout clock."""

    kind = "audio"

    def __init__(self, call: Call) -> None:
        super().__init__()
        self._call = call
        self._clock = PlayoutClock(ptime=0.02)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._next_tick()
        frame = self._call.pull_bot_frame()
        out = av.AudioFrame.from_ndarray(frame.samples.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = frame.sample_rate
        out.pts = frame.timestamp
        out.time_base = fractions.Fraction(1, frame.sample_rate)
        return out

    async def _next_tick(self) -> None:
        playout = self._call.playout
        delay = self._clock.time_to_next(time.monotonic())
        if delay > 0 and not playout.speaking:
            try:
                async with asyncio.timeout(delay):
                    await playout.wait_for_start()  # at once if speech is already queued
                self._clock.restart(time.monotonic())  # a talkspurt starts now
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(delay)
        self._clock.tick(time.monotonic())


def to_mono(frame: av.AudioFrame) -> AudioFrame:
    """Convert a decoded aiortc frame (packed s16, any channel count) to our mono frame."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    mono = data[0] if frame.format.is_planar else data.reshape(-1)[::channels]
    return AudioFrame(np.ascontiguousarray(mono, dtype=np.int16), frame.sample_rate, frame.pts or 0)


async def pump_caller_audio(track: MediaStreamTrack, call: Call) -> None:
    """Feed the caller's frames into the call until the track ends; then the caller is gone."""
    try:
        while not call.ended:
            frame = await track.recv()
            call.feed_caller_audio(to_mono(frame))
    except MediaStreamError:
        call.hangup("peer-gone")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("call %s: inbound audio failed", call.call_id)
        call.hangup("error")


def set_uplink_prefetch(receiver: RTCRtpReceiver, frames: int) -> None:
    """Make aiortc hold ``frames`` inbound audio frames instead of its fixed four (80 ms).

    Caller audio feeds a VAD and a recogniser, not a listener's ears: a late packet costs them
    little, while every buffered frame delays barge-in. aiortc has no option for this, so the
    receiver's private buffer is replaced (checked against the pinned aiortc major version).
    """
    attribute = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, attribute):
        log.warning("this aiortc version has no %s; uplink prefetch left at default", attribute)
        return
    setattr(receiver, attribute, JitterBuffer(capacity=16, prefetch=frames))
