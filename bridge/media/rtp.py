"""RFC 3550 RTP packets, wrap-aware sequence/timestamp arithmetic and the sender's clock.

Everything here is sans-I/O: ``RtpPacket`` is a value (parse bytes in, serialize bytes out),
and ``RtpPacketizer`` only tracks the numbers a sender must keep continuous. Sockets, timers
and pacing belong to the caller, which keeps these pieces trivially testable and reusable by
both the SIP leg and any RTP-speaking test peer.

Only version 2 exists in practice, so the version is validated on parse and always written as
2 rather than stored.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet, a value: treat it as immutable. ``padding`` is the number of padding
    bytes including the final count byte (0 = no padding); ``extension_profile`` is None when
    there is no header extension. Not frozen: every call parses 50 a second, and a frozen
    dataclass's initialiser costs three times as much."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding: int = 0

    def __post_init__(self) -> None:
        # The media path builds and parses 100 packets a second per call: one cheap test for
        # the usual packet (no CSRCs, extension or padding), the itemised checks otherwise.
        if (
            0 <= self.payload_type < 128
            and 0 <= self.sequence_number < _SEQ_MOD
            and 0 <= self.timestamp < _TS_MOD
            and 0 <= self.ssrc < _TS_MOD
            and not self.csrc
            and self.extension_profile is None
            and not self.extension
            and not self.padding
        ):
            return
        checks = (
            (0 <= self.payload_type < 128, "payload type must fit in 7 bits"),
            (0 <= self.sequence_number < _SEQ_MOD, "sequence number must fit in 16 bits"),
            (0 <= self.timestamp < _TS_MOD, "timestamp must fit in 32 bits"),
            (0 <= self.ssrc < _TS_MOD, "SSRC must fit in 32 bits"),
            (len(self.csrc) < 16, "at most 15 CSRCs"),
            (all(0 <= c < _TS_MOD for c in self.csrc), "CSRC must fit in 32 bits"),
            (len(self.extension) % 4 == 0, "extension data must be a multiple of 4 bytes"),
            (self.extension_profile is not None or not self.extension, "extension needs a profile"),
            (0 <= self.padding < 256, "padding must be 0..255 bytes"),
        )
        for ok, message in checks:
            if not ok:
                raise RtpError(message)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < _HEADER.size:
            raise RtpError(f"packet too short: {len(data)} bytes, RTP header needs 12")
        first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
        if first == 0x80:  # version 2 and nothing but the fixed header: the usual packet
            # Every field is in range by construction: skip the initialiser's checks.
            packet = _new_packet(cls)
            packet.payload_type, packet.marker = second & 0x7F, second > 0x7F
            packet.sequence_number, packet.timestamp, packet.ssrc = seq, timestamp, ssrc
            packet.payload, packet.csrc, packet.extension_profile = data[12:], (), None
            packet.extension, packet.padding = b"", 0
            return packet
        if first >> 6 != 2:
            raise RtpError(f"bad RTP version {first >> 6}, expected 2")
        end = len(data)
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or _HEADER.size + padding > end:
                raise RtpError(f"bad padding length {padding} for a {end}-byte packet")
            end -= padding
        offset = _HEADER.size
        csrc_count = first & 0x0F
        if offset + 4 * csrc_count > end:
            raise RtpError(f"truncated CSRC list: {csrc_count} entries announced")
        csrc = struct.unpack_from(f"!{csrc_count}I", data, offset)
        offset += 4 * csrc_count
        profile = None
        extension = b""
        if first & 0x10:
            if offset + _EXTENSION_HEADER.size > end:
                raise RtpError("truncated header extension: no room for its header")
            profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
            offset += _EXTENSION_HEADER.size
            if offset + 4 * words > end:
                raise RtpError(f"truncated header extension: {words} words announced")
            extension = data[offset : offset + 4 * words]
            offset += 4 * words
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=data[offset:end],
            marker=bool(second & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension=extension,
            padding=padding,
        )

    def serialize(self) -> bytes:
        has_extension = self.extension_profile is not None
        if not (self.csrc or has_extension or self.padding):
            second = (0x80 if self.marker else 0) | self.payload_type
            header = _HEADER.pack(0x80, second, self.sequence_number, self.timestamp, self.ssrc)
            return header + self.payload
        first = 0x80 | (0x20 if self.padding else 0) | (0x10 if has_extension else 0)
        parts = [
            _HEADER.pack(
                first | len(self.csrc),
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            ),
            struct.pack(f"!{len(self.csrc)}I", *self.csrc),
        ]
        if self.extension_profile is not None:
            words = len(self.extension) // 4
            parts += [_EXTENSION_HEADER.pack(self.extension_profile, words), self.extension]
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)


_new_packet = object.__new__


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, taking the shorter way round the wrap."""
    return (a - b + 0x8000) % _SEQ_MOD - 0x8000


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, taking the shorter way round the wrap."""
    return (a - b + 0x80000000) % _TS_MOD - 0x80000000


def _random_if_none(value: int | None, bits: int) -> int:
    return random.getrandbits(bits) if value is None else value


class RtpPacketizer:
    """The sending side's RTP state: one SSRC and continuous sequence numbers and timestamps.

    Starting values are random (RFC 3550 §5.1) unless given, which tests use. Timestamps
    advance by the samples each packet carries; ``advance`` moves time on without sending so a
    sender that suppresses silence keeps its timestamps aligned to real time, and the packet
    after ``start_talkspurt`` carries the marker bit so receivers may re-sync their playout.
    """

    def __init__(
        self,
        payload_type: int,
        *,
        ssrc: int | None = None,
        sequence_number: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.ssrc = _random_if_none(ssrc, 32)
        self.sequence_number = _random_if_none(sequence_number, 16)
        self.timestamp = _random_if_none(timestamp, 32)
        self._talkspurt_pending = True

    def start_talkspurt(self) -> None:
        """Mark the next packet as the first of a talk-spurt (after silence)."""
        self._talkspurt_pending = True

    def advance(self, samples: int) -> None:
        """Let ``samples`` of time pass without sending anything."""
        self.timestamp = (self.timestamp + samples) % _TS_MOD

    def packetize(
        self,
        payload: bytes,
        samples: int,
        marker: bool | None = None,
        *,
        payload_type: int | None = None,
    ) -> RtpPacket:
        """Wrap ``payload`` (covering ``samples`` of time) in the next packet.

        ``marker=None`` sets the bit on the first packet of a talk-spurt. ``payload_type``
        overrides the default for packets such as telephone-events that share the stream;
        with ``samples=0`` the timestamp stays put, as RFC 4733 events need.
        """
        packet = RtpPacket(
            payload_type=self.payload_type if payload_type is None else payload_type,
            sequence_number=self.sequence_number,
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=self._talkspurt_pending if marker is None else marker,
        )
        self._step(samples)
        return packet

    def packetize_bytes(self, payload: bytes, samples: int) -> bytes:
        """``packetize(payload, samples).serialize()`` without building the packet value: a
        call's media path sends 50 of these a second on its shared 20 ms clock."""
        second = (0x80 if self._talkspurt_pending else 0) | self.payload_type
        data = _HEADER.pack(0x80, second, self.sequence_number, self.timestamp, self.ssrc)
        self._step(samples)
        return data + payload

    def _step(self, samples: int) -> None:
        self._talkspurt_pending = False
        self.sequence_number = (self.sequence_number + 1) % _SEQ_MOD
        self.advance(samples)
