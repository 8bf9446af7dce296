"""One call's RTP leg: a sans-I/O core (:class:`RtpSession`) and its adapter (:class:`RtpLeg`).

The core takes datagrams and the time and hands back digits, caller frames and packets to send;
the adapter owns the UDP socket and is driven, in both directions, by the process's one 20 ms
:class:`MediaClock`, so outbound pacing and inbound playout can never drift apart.

Choices, and why:

* Symmetric RTP (RFC 4961): phones behind NAT send from a different address than their SDP
  says, so after the first valid packet we send to where the caller's RTP actually comes from.
  The latch is taken once per offer/answer (a re-INVITE may move the stream), so stray or
  spoofed packets cannot steal a running call's media.
* One clock task ticks every leg, not a sleeping task per call: one timer wake-up per 20 ms
  however many calls are up. Each tick first sends every leg's packet, then takes every leg's
  caller audio, then builds every leg's packet for the next tick. So a tick's sends are nothing
  but system calls and never queue behind other calls' work: a hundred calls' packets leave
  within a millisecond or two of the deadline. The price is one frame (20 ms) more latency on
  the bot's audio; a barge-in still silences the very next packet, because packets are built
  after the caller audio that may contain it.
* The clock ticks every 20 ms, the call's frame size. Packets carry the negotiated ``ptime`` of
  audio and go out as soon as that much is ready, so 40/60 ms ptimes are paced exactly and 30 ms
  ones alternate 20/40 ms gaps, which every jitter buffer absorbs.
* The call always gets one frame per tick (jitter-buffer output, or silence before the first
  packet and while on hold), so its own no-media watchdog never fires for SIP calls: the RTP
  timeout here is the single judge of a dead peer, and it knows about hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from bridge.call import Call
from bridge.media.dtmf import DtmfReceiver
from bridge.media.frame import AudioFrame, silence
from bridge.media.g711 import Codec, codec_by_name
from bridge.media.jitter import JitterBuffer
from bridge.media.playout import PlayoutClock
from bridge.media.rtp import RtpError, RtpPacket, RtpPacketizer
from bridge.sip.rtcp_session import FIRST_AFTER_S, INTERVAL_S, RtcpSession
from bridge.sip.sdp import NegotiatedMedia

log = logging.getLogger(__name__)

FRAME_MS = 20
_MAX_DATAGRAM = 4096  # G.711 at any ptime fits; anything bigger is not the stream negotiated
_RECEIVING = ("sendrecv", "recvonly")
_CATCH_UP_S = FRAME_MS / 2 / 1000  # a tick this late reads the sockets before playing
_MAX_DRAINED = 1000 // FRAME_MS


@dataclass(frozen=True, slots=True)
class RtpSettings:
    no_rtp_timeout_s: float = 20.0
    min_delay_ms: float = 20
    max_delay_ms: float = 200
    initial_delay_ms: float = 60


@dataclass(slots=True)
class RtpCounters:
    received: int = 0
    ignored: int = 0  # malformed, wrong payload type, or from elsewhere once latched
    sent: int = 0
    digits: int = 0


class RtpSession:
    """The RTP state of one call, sans-I/O: feed datagrams in, pull frames and packets out."""

    def __init__(self, media: NegotiatedMedia, now: float, settings: RtpSettings) -> None:
        self.settings = settings
        self.counters = RtpCounters()
        self._codec = _codec(media)
        self._frame = media.clock_rate * FRAME_MS // 1000
        self._silence = _silence_payload(self._codec, self._frame)
        self._jitter = JitterBuffer(
            media.clock_rate,
            self._frame,
            lambda packet: self._codec.decode(packet.payload),
            min_delay_ms=settings.min_delay_ms,
            max_delay_ms=settings.max_delay_ms,
            initial_delay_ms=settings.initial_delay_ms,
        )
        self._dtmf = DtmfReceiver()
        self._packetizer = RtpPacketizer(media.payload_type)
        self.rtcp = RtcpSession(
            self._packetizer, media.clock_rate, lambda: self._jitter.stats.jitter_ms / 1000
        )
        self._rtcp_remote: tuple[str, int] | None = None
        self._pending = np.empty(0, np.int16)
        self._last_heard = now
        self.media = media
        self.remote = (media.remote_addr, media.remote_port)
        self.latched = False

    def update(self, media: NegotiatedMedia, now: float) -> None:
        """Apply a re-INVITE: hold/resume, a new codec, or a new address (which re-latches)."""
        address = (media.remote_addr, media.remote_port)
        if address != (self.media.remote_addr, self.media.remote_port):
            self.remote, self.latched = address, False
            self._rtcp_remote = None
        if media.may_send and not self.media.may_send:
            self._packetizer.start_talkspurt()
        if media.direction in _RECEIVING and self.media.direction not in _RECEIVING:
            self._last_heard = now  # the timeout restarts when the peer is due to send again
        self._codec = _codec(media)
        self._silence = _silence_payload(self._codec, self._frame)
        self._packetizer.payload_type = media.payload_type
        self.media = media

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> str | None:
        """Take one datagram; returns a digit when it starts a new RFC 4733 key press."""
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.counters.ignored += 1
            return None
        pt = packet.payload_type
        if pt not in (self.media.payload_type, self.media.telephone_event_pt) or (
            self.latched and source != self.remote
        ):
            self.counters.ignored += 1
            return None
        if not self.latched:
            self.remote, self.latched = source, True
        self.counters.received += 1
        self._last_heard = now
        self.rtcp.rtp_received(packet)
        if pt == self.media.payload_type:
            self._jitter.push(packet, now)
            return None
        try:
            digit = self._dtmf.feed(packet.timestamp, packet.payload)
        except ValueError:
            return None
        self.counters.digits += digit is not None
        return digit

    def caller_audio(self, now: float) -> AudioFrame:
        """The caller's next 20 ms: buffered audio, concealment, or silence before any arrived."""
        frame = self._jitter.pop(now)
        if frame is None:
            return AudioFrame(silence(self._frame), self.media.clock_rate)
        return frame

    def outbound(self, pull: Callable[[], AudioFrame]) -> bytes | None:
        """Take the bot's next 20 ms frame from ``pull``; the packet to send once a ``ptime``
        of audio is ready, None otherwise (or while the peer holds us).

        Before a late offer's answer (no peer address yet) the bot's audio is not taken at
        all, so its greeting starts when the caller can hear it rather than clipped."""
        if not self.media.remote_port:
            return None
        frame = pull()
        rate = self.media.clock_rate
        if frame.sample_rate != rate:
            raise ValueError(f"bot frame at {frame.sample_rate} Hz, RTP runs at {rate}")
        size = rate * self.media.ptime // 1000
        samples = frame.samples
        if self._pending.size or samples.size != size:  # ptime is not the 20 ms frame
            self._pending = np.concatenate([self._pending, samples])
            if self._pending.size < size:
                return None
            samples, self._pending = self._pending[:size], self._pending[size:]
        if not self.media.may_send:
            self._packetizer.advance(size)
            return None
        self.counters.sent += 1
        silent, silent_payload = self._silence  # the playout's shared frame, encoded once
        payload = silent_payload if samples is silent else self._codec.encode(samples)
        self.rtcp.rtp_sent(len(payload))
        return self._packetizer.packetize_bytes(payload, size)

    def rtcp_received(self, data: bytes, source: tuple[str, int], wall: float, now: float) -> None:
        """Take an RTCP datagram: only the media peer's host is heard, and the port it sends
        from is where our reports go (symmetric, as for RTP)."""
        if source[0] != self.remote[0]:
            self.rtcp.counters.ignored += 1
            return
        self._rtcp_remote = source
        self.rtcp.received(data, wall, now)

    @property
    def rtcp_remote(self) -> tuple[str, int]:
        """Where reports go: the peer's RTCP source once heard, else its RTP port + 1."""
        return self._rtcp_remote or (self.remote[0], self.remote[1] + 1)

    def timed_out(self, now: float) -> bool:
        """No RTP for too long while the peer is meant to send (hold does not count)."""
        receiving = self.media.direction in _RECEIVING
        return receiving and now - self._last_heard > self.settings.no_rtp_timeout_s

    def stats(self) -> dict[str, object]:
        jitter = asdict(self._jitter.stats)
        jitter = {k: round(v, 1) if isinstance(v, float) else v for k, v in jitter.items()}
        counters = asdict(self.counters)
        return {"codec": self.media.codec, **counters, "jitter": jitter, "rtcp": self.rtcp.stats()}


def _silence_payload(codec: Codec, samples: int) -> tuple[np.ndarray, bytes]:
    zeros = silence(samples)
    return zeros, codec.encode(zeros)


def _codec(media: NegotiatedMedia) -> Codec:
    codec = codec_by_name(media.codec)
    if codec is None:
        raise ValueError(f"no codec {media.codec!r} for RTP")
    return codec


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received(data, (addr[0], addr[1]))


class MediaClock:
    """The 20 ms tick shared by every RTP leg of the process (see the module docstring)."""

    def __init__(self) -> None:
        self._legs: dict[RtpLeg, None] = {}  # ordered: legs tick in the order they joined
        self._task: asyncio.Task[None] | None = None

    def join(self, leg: RtpLeg) -> None:
        self._legs[leg] = None
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rtp-clock")

    def leave(self, leg: RtpLeg) -> None:
        self._legs.pop(leg, None)

    async def _run(self) -> None:
        # A fresh grid whenever calls resume after none were up, so the idle gap is no stall.
        clock = PlayoutClock(FRAME_MS / 1000)
        try:
            while self._legs:
                skipped = clock.skipped
                deadline = clock.deadline(await clock.wait_next())
                legs = list(self._legs)
                for leg in legs:
                    leg.send_tick(deadline, clock.skipped - skipped)
                now = time.monotonic()
                # A late tick (the process was busy) plays frames whose packets may still sit
                # unread in the sockets: reading them first keeps a busy spell from turning into
                # concealment, whose cost would make the process busier still.
                behind = now - deadline > _CATCH_UP_S
                for leg in legs:
                    if behind:
                        leg.drain()
                    leg.receive_tick(now)
                for leg in legs:
                    leg.prepare_tick()
        finally:
            self._task = None


class RtpLeg:
    """The RTP socket of one call, feeding and draining its :class:`Call` on the shared clock."""

    def __init__(
        self,
        call: Call,
        media: NegotiatedMedia,
        host: str,
        port: int,
        settings: RtpSettings,
        clock: MediaClock,
    ) -> None:
        self.call = call
        self.host, self.port = host, port
        self.session = RtpSession(media, time.monotonic(), settings)
        self.lateness: deque[float] = deque(maxlen=15_000)
        """Seconds each recent packet left after its tick's deadline."""
        self.skipped = 0
        """Ticks the shared clock dropped (after stalls) while this leg was on it."""
        self._prepared: bytes | None = None
        self._clock = clock
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._next_report = time.monotonic() + FIRST_AFTER_S
        self._finished: asyncio.Future[None] | None = None
        call.metrics.extra["rtp"] = self.stats

    async def start(self) -> None:
        """Bind the port the SDP answer announced (before answering, so no packet is lost),
        and the one above it for RTCP, which the call can do without if it is taken."""
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (
            await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._socket, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)
        try:
            self._rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self.rtcp_received), local_addr=(self.host, self.port + 1)
            )
        except OSError as exc:
            log.warning("call %s: no RTCP on port %d: %s", self.call.call_id, self.port + 1, exc)

    def rtcp_received(self, data: bytes, source: tuple[str, int]) -> None:
        self.session.rtcp_received(data, source, time.time(), time.monotonic())

    def _readable(self) -> bool:
        """Read one datagram; False when there was none. One per readiness callback, as
        asyncio's datagram transport reads, minus its layers and its 256 KiB receive buffer
        (allocated for every packet)."""
        assert self._socket is not None
        try:
            data, source = self._socket.recvfrom(_MAX_DATAGRAM)
        except BlockingIOError:
            return False
        except OSError:  # an ICMP error about an earlier send: the next read goes on
            return True
        self.received(data, (source[0], source[1]))
        return True

    def drain(self) -> None:
        """Read every datagram waiting in the socket (at most a second's worth)."""
        if self._socket is not None:
            for _ in range(_MAX_DRAINED):
                if not self._readable():
                    return

    def received(self, data: bytes, source: tuple[str, int]) -> None:
        digit = self.session.receive(data, source, time.monotonic())
        if digit is not None:
            self.call.dtmf(digit)

    def update(self, media: NegotiatedMedia) -> None:
        self.session.update(media, time.monotonic())

    async def run(self) -> None:
        """Tick on the shared clock until the call ends: send the bot's audio, feed the
        caller's, watch for silence."""
        if self.call.ended:
            return
        self._finished = asyncio.get_running_loop().create_future()
        self._clock.join(self)
        try:
            await self._finished
        finally:
            self._clock.leave(self)

    def send_tick(self, deadline: float, skipped: int) -> None:
        """Send the packet built at the end of the previous tick."""
        self.skipped += skipped
        packet, self._prepared = self._prepared, None
        if packet is not None and self._socket is not None:
            self._send(packet)
        self.lateness.append(time.monotonic() - deadline)

    def prepare_tick(self) -> None:
        """Build the next tick's packet from the bot's next frame."""
        if self.call.ended:
            return
        try:
            self._prepared = self.session.outbound(self.call.pull_bot_frame)
        except Exception:
            self._fail()

    def _send(self, packet: bytes) -> None:
        """Send at once or never: a packet the socket cannot take now would be stale by the
        time it could (asyncio's transport would queue it and send a burst later)."""
        assert self._socket is not None
        try:
            self._socket.sendto(packet, self.session.remote)
        except OSError as exc:  # a full buffer, or the peer's port closed (ICMP): keep going
            log.debug("call %s: RTP packet not sent: %s", self.call.call_id, exc)

    def receive_tick(self, now: float) -> None:
        if now >= self._next_report:
            self._next_report = now + INTERVAL_S
            self._send_report(now)
        try:
            self.call.feed_caller_audio(self.session.caller_audio(now))
            if self.session.timed_out(now):
                log.info("call %s: RTP timed out", self.call.call_id)
                self.call.hangup("no-media")
        except Exception:
            self._fail()
        if self.call.ended:
            self._finish()

    def _fail(self) -> None:
        log.exception("call %s: RTP leg failed", self.call.call_id)
        self.call.hangup("error")
        self._finish()

    def _finish(self) -> None:
        self._clock.leave(self)
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def _send_report(self, now: float, *, bye: bool = False) -> None:
        if self._rtcp is not None and self.session.remote[1]:  # port 0: peer not known yet
            report = self.session.rtcp.report(time.time(), now, bye=bye)
            self._rtcp.sendto(report, self.session.rtcp_remote)

    def close(self) -> None:
        if self._rtcp is not None:
            with contextlib.suppress(Exception):
                self._send_report(time.monotonic(), bye=True)
                self._rtcp.close()
            self._rtcp = None
        if self._socket is not None:
            with contextlib.suppress(Exception):
                assert self._loop is not None
                self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def stats(self) -> dict[str, object]:
        """Session counters, jitter-buffer stats and send-tick lateness (ms) for records/benches."""
        lateness = np.array(self.lateness) * 1000
        ticks: dict[str, object] = {"ticks": int(lateness.size), "skipped": self.skipped}
        if lateness.size:
            p50, p99 = np.percentile(lateness, [50, 99])
            ticks |= {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}
            low, high = float(lateness.min()), float(lateness.max())
            ticks |= {"min_ms": round(low, 2), "max_ms": round(high, 2)}
        return {**self.session.stats(), "send_lateness": ticks}
