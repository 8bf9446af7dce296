"""RFC 3550 RTCP: sender and receiver reports, CNAME and BYE, as values (sans-I/O).

Packets are frozen values: :func:`parse` turns a compound datagram into them and
:func:`serialize` back; packet types we do not use (APP, feedback, XR) are skipped on parse, as
RFC 3550 asks receivers to. :class:`ReceptionStats` keeps the per-source counters of RFC 3550
appendix A.3 that a report block needs (expected versus received, the extended highest sequence
number, the last SR seen); the interarrival jitter comes from the jitter buffer, which already
estimates it by the formula of appendix A.8, so it is passed in rather than computed twice.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

SR, RR, SDES, BYE = 200, 201, 202, 203
_CNAME = 1
_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|cumulative, highest, jitter, LSR, DLSR
_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)


class RtcpError(ValueError):
    """A datagram that is not a well-formed RTCP compound packet."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """What the sender of a report heard from source ``ssrc`` (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # lost / expected since the previous report, in 1/256
    cumulative_lost: int  # expected - received since the start; negative with duplicates
    highest_seq: int  # extended: sequence cycles << 16 | highest sequence number
    jitter: int  # interarrival jitter in timestamp units
    lsr: int = 0  # middle 32 bits of the NTP time of the last SR from ssrc; 0: none yet
    dlsr: int = 0  # delay since that SR arrived, in 1/65536 s


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP timestamp: seconds since 1900 << 32 | fraction
    rtp_timestamp: int  # the same instant on the RTP clock
    packets: int
    octets: int  # payload bytes
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """One SDES chunk's CNAME: every compound packet carries one (RFC 3550 §6.1)."""

    ssrc: int
    cname: str


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str = ""


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye


def ntp_timestamp(unix_time: float) -> int:
    """The 64-bit NTP timestamp of a Unix time."""
    return round((unix_time + _NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as LSR carries it."""
    return (ntp >> 16) & 0xFFFF_FFFF


def serialize(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound packet, in the order given (a report first, then SDES, by RFC 3550)."""
    return b"".join(_serialize_one(packet) for packet in packets)


def _serialize_one(packet: RtcpPacket) -> bytes:
    if isinstance(packet, SenderReport):
        info = _SENDER_INFO.pack(
            packet.ssrc, packet.ntp, packet.rtp_timestamp, packet.packets, packet.octets
        )
        return _with_header(SR, len(packet.reports), info + _blocks(packet.reports))
    if isinstance(packet, ReceiverReport):
        body = struct.pack("!I", packet.ssrc) + _blocks(packet.reports)
        return _with_header(RR, len(packet.reports), body)
    if isinstance(packet, SourceDescription):
        cname = packet.cname.encode()
        if len(cname) > 255:
            raise RtcpError("CNAME longer than 255 bytes")
        chunk = struct.pack("!IBB", packet.ssrc, _CNAME, len(cname)) + cname
        chunk += bytes(4 - len(chunk) % 4)  # the end item (a zero), padded to a 32-bit word
        return _with_header(SDES, 1, chunk)
    reason = packet.reason.encode()
    if len(reason) > 255 or len(packet.ssrcs) > 31:
        raise RtcpError("BYE reason longer than 255 bytes or more than 31 sources")
    body = b"".join(struct.pack("!I", ssrc) for ssrc in packet.ssrcs)
    if reason:
        text = bytes([len(reason)]) + reason
        body += text + bytes(-len(text) % 4)
    return _with_header(BYE, len(packet.ssrcs), body)


def _blocks(reports: tuple[ReportBlock, ...]) -> bytes:
    if len(reports) > 31:
        raise RtcpError("at most 31 report blocks in one report")
    out = []
    for r in reports:
        if not (0 <= r.fraction_lost < 256 and -(1 << 23) <= r.cumulative_lost < 1 << 23):
            raise RtcpError(f"report block for {r.ssrc} out of range: {r}")
        lost = (r.fraction_lost << 24) | (r.cumulative_lost & 0xFF_FFFF)
        out.append(_BLOCK.pack(r.ssrc, lost, r.highest_seq, r.jitter, r.lsr, r.dlsr))
    return b"".join(out)


def _with_header(packet_type: int, count: int, body: bytes) -> bytes:
    return _HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


def parse(data: bytes) -> list[RtcpPacket]:
    """Every SR, RR, SDES CNAME and BYE in a compound packet; other types are skipped (a
    datagram of only those, such as baresip's APP keep-alives, gives an empty list)."""
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise RtcpError(f"truncated RTCP header at byte {offset}")
        first, packet_type, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != 2:
            raise RtcpError(f"bad RTCP version {first >> 6} at byte {offset}, expected 2")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtcpError(f"RTCP packet at byte {offset} runs past the datagram")
        body = data[offset + 4 : end]
        if first & 0x20:  # padding: only the last packet may have it; its last byte counts it
            if end != len(data) or not 0 < body[-1] <= len(body):
                raise RtcpError("bad RTCP padding")
            body = body[: -body[-1]]
        packets.extend(_parse_one(packet_type, first & 0x1F, body))
        offset = end
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> list[RtcpPacket]:
    try:
        if packet_type == SR:
            ssrc, ntp, rtp_ts, sent, octets = _SENDER_INFO.unpack_from(body)
            reports = _parse_blocks(body, _SENDER_INFO.size, count)
            return [SenderReport(ssrc, ntp, rtp_ts, sent, octets, reports)]
        if packet_type == RR:
            (ssrc,) = struct.unpack_from("!I", body)
            return [ReceiverReport(ssrc, _parse_blocks(body, 4, count))]
        if packet_type == SDES:
            return _parse_sdes(body, count)
        if packet_type == BYE:
            ssrcs = struct.unpack_from(f"!{count}I", body)
            reason = b""
            if len(body) > 4 * count:
                length = body[4 * count]
                reason = body[4 * count + 1 : 4 * count + 1 + length]
            return [Bye(ssrcs, reason.decode("utf-8", "replace"))]
    except struct.error as exc:
        raise RtcpError(f"RTCP packet type {packet_type} too short: {exc}") from None
    return []


def _parse_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for i in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(body, offset + i * 24)
        cumulative = lost & 0xFF_FFFF
        cumulative -= (cumulative & 0x80_0000) << 1  # 24-bit two's complement
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sdes(body: bytes, count: int) -> list[RtcpPacket]:
    out: list[RtcpPacket] = []
    offset = 0
    for _ in range(count):
        (ssrc,) = struct.unpack_from("!I", body, offset)
        offset += 4
        cname = None
        while offset < len(body) and body[offset] != 0:
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtcpError("truncated SDES item")
            kind, length = body[offset], body[offset + 1]
            if kind == _CNAME:
                cname = body[offset + 2 : offset + 2 + length].decode("utf-8", "replace")
            offset += 2 + length
        offset += 4 - offset % 4  # the end item and the padding to the next word
        if cname is not None:
            out.append(SourceDescription(ssrc, cname))
    return out


class ReceptionStats:
    """One received source's counters for report blocks (RFC 3550 appendix A.3).

    Feed every RTP packet's sequence number to :meth:`received` and every sender report to
    :meth:`sender_report`, with the arrival time in seconds on any monotonic clock.
    """

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.packets = 0
        self._base: int | None = None  # extended sequence number of the first packet
        self._highest = 0  # extended highest sequence number
        self._expected_prior = 0
        self._received_prior = 0
        self._last_sr: tuple[int, float] | None = None  # LSR and when that SR arrived

    def received(self, sequence_number: int) -> None:
        self.packets += 1
        if self._base is None:
            self._base = self._highest = sequence_number
            return
        delta = (sequence_number - self._highest) & 0xFFFF
        if delta < 0x8000:  # ahead (wrapping when sequence numbers roll over); else late
            self._highest += delta

    def sender_report(self, report: SenderReport, arrival: float) -> None:
        self._last_sr = (middle32(report.ntp), arrival)

    def report_block(self, now: float, jitter: int) -> ReportBlock:
        """The block describing this source now; resets the interval for ``fraction_lost``."""
        expected = 0 if self._base is None else self._highest - self._base + 1
        interval_expected = expected - self._expected_prior
        interval_received = self.packets - self._received_prior
        self._expected_prior, self._received_prior = expected, self.packets
        interval_lost = interval_expected - interval_received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = (interval_lost << 8) // interval_expected
        lost = max(-(1 << 23), min(expected - self.packets, (1 << 23) - 1))
        lsr = dlsr = 0
        if self._last_sr is not None:
            lsr = self._last_sr[0]
            dlsr = min(round((now - self._last_sr[1]) * 65536), 0xFFFF_FFFF)
        return ReportBlock(
            self.ssrc, fraction, lost, self._highest & 0xFFFF_FFFF, jitter, lsr, dlsr
        )
