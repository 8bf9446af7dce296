"""One call's RTCP (RFC 3550 §6), sans-I/O: the reports we send and what the peer's tell us.

The RTP session feeds it every packet it accepts and every payload it sends; the RTP leg asks
for a compound report (SR once we have sent audio, else RR, then SDES CNAME) every few seconds
and hands it the peer's datagrams. From the peer's reports about our stream it keeps the loss
and jitter the peer sees and the round-trip time (from the LSR/DLSR echo of our last SR), which
end up in the call record beside our own jitter-buffer figures.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from bridge.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    middle32,
    ntp_timestamp,
    parse,
    serialize,
)
from bridge.media.rtp import RtpPacket, RtpPacketizer

INTERVAL_S = 5.0  # RFC 3550's minimum report interval
FIRST_AFTER_S = 1.0  # the first report goes early, so short calls get one too


@dataclass(slots=True)
class RtcpCounters:
    sent: int = 0
    received: int = 0
    ignored: int = 0  # malformed, or from another host than the call's media


class RtcpSession:
    """Reports for one RTP stream we send (``packetizer``) and one we receive."""

    def __init__(
        self, packetizer: RtpPacketizer, clock_rate: int, jitter_s: Callable[[], float]
    ) -> None:
        self.counters = RtcpCounters()
        self.cname = uuid.uuid4().hex[:16]  # random per call (RFC 7022): nothing to track
        self._packetizer = packetizer
        self._rate = clock_rate
        self._jitter_s = jitter_s  # the jitter buffer's RFC 3550 A.8 estimate
        self._reception: ReceptionStats | None = None
        self._packets_sent = 0
        self._octets_sent = 0
        self._peer_view: ReportBlock | None = None
        self._rtt_s: float | None = None

    def rtp_received(self, packet: RtpPacket) -> None:
        if self._reception is None or self._reception.ssrc != packet.ssrc:
            self._reception = ReceptionStats(packet.ssrc)  # a new source starts afresh
        self._reception.received(packet.sequence_number)

    def rtp_sent(self, payload_bytes: int) -> None:
        self._packets_sent += 1
        self._octets_sent += payload_bytes

    def report(self, wall: float, now: float, *, bye: bool = False) -> bytes:
        """Our compound report at Unix time ``wall`` (monotonic ``now``); ``bye`` ends it
        with a BYE, for the call's last report."""
        ssrc = self._packetizer.ssrc
        blocks: tuple[ReportBlock, ...] = ()
        if self._reception is not None:
            jitter = round(self._jitter_s() * self._rate)
            blocks = (self._reception.report_block(now, jitter),)
        packets: list[RtcpPacket] = [
            SenderReport(
                ssrc,
                ntp_timestamp(wall),
                self._packetizer.timestamp,
                self._packets_sent,
                self._octets_sent,
                blocks,
            )
            if self._packets_sent
            else ReceiverReport(ssrc, blocks),
            SourceDescription(ssrc, self.cname),
        ]
        if bye:
            packets.append(Bye((ssrc,)))
        self.counters.sent += 1
        return serialize(packets)

    def received(self, data: bytes, wall: float, now: float) -> None:
        """Take one of the peer's RTCP datagrams, arrived at ``wall`` / ``now``."""
        try:
            packets = parse(data)
        except RtcpError:
            self.counters.ignored += 1
            return
        self.counters.received += 1
        for packet in packets:
            if not isinstance(packet, SenderReport | ReceiverReport):
                continue
            source = self._reception
            if isinstance(packet, SenderReport) and source and packet.ssrc == source.ssrc:
                source.sender_report(packet, now)
            for block in packet.reports:
                if block.ssrc == self._packetizer.ssrc:
                    self._peer_view = block
                    if block.lsr:
                        self._rtt_s = _round_trip(block, wall)

    def stats(self) -> dict[str, object]:
        """Counters, and the peer's view of our stream once it has reported on it."""
        out: dict[str, object] = {
            "sent": self.counters.sent,
            "received": self.counters.received,
            "ignored": self.counters.ignored,
            "rtt_ms": None if self._rtt_s is None else round(self._rtt_s * 1000, 1),
        }
        if (view := self._peer_view) is not None:
            out |= {
                "peer_fraction_lost_pct": round(view.fraction_lost * 100 / 256, 1),
                "peer_cumulative_lost": view.cumulative_lost,
                "peer_jitter_ms": round(view.jitter * 1000 / self._rate, 1),
            }
        return out


def _round_trip(block: ReportBlock, wall: float) -> float:
    """RFC 3550 §6.4.1: arrival - LSR - DLSR, in 1/65536 s; clock rounding can make a
    loopback round trip a hair negative, which counts as 0."""
    delta = (middle32(ntp_timestamp(wall)) - block.lsr - block.dlsr) & 0xFFFF_FFFF
    return delta / 65536 if delta < 1 << 31 else 0.0
