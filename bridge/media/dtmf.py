"""RFC 4733 telephone-events: the 4-byte payload, a receiver that yields each key press once,
and a sender that produces the packet train for one key press.

All packets of one event share the RTP timestamp of the event start; that timestamp, not the
marker bit (which can be lost), is what tells one key press from the next. The end packet is
repeated because it is the only one carrying the final duration, and losing every copy must
not lose the digit, so the receiver reports a digit as soon as any packet of a new event
arrives rather than waiting for the end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.media.rtp import RtpPacket, RtpPacketizer, ts_diff

_PAYLOAD = struct.Struct("!BBH")
DIGITS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event payload. ``volume`` is attenuation in dBm0 (0-63, larger is
    quieter); ``duration`` is in RTP timestamp units since the event's start."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event < 256 or not 0 <= self.volume < 64 or not 0 <= self.duration < 65536:
            raise ValueError(f"telephone-event field out of range: {self}")

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < _PAYLOAD.size:
            raise ValueError(f"telephone-event payload needs 4 bytes, got {len(payload)}")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


def digit_to_event(digit: str) -> int:
    """Map a key (0-9, *, #, A-D; letters case-insensitive) to its event code."""
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


def event_to_digit(event: int) -> str | None:
    """The key for an event code, or None for non-DTMF events (flash, tones, ...)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


class DtmfReceiver:
    """Turns the telephone-event packets of one RTP stream into digits, once per key press.

    Packets carrying the timestamp of the current event (updates, repeated ends) are ignored,
    and so are stragglers from an older event that arrive reordered.
    """

    def __init__(self) -> None:
        self._current: int | None = None

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        """Take one packet's RTP timestamp and payload; return the digit if it starts a new
        key press. Raises ValueError for a payload too short to be a telephone-event."""
        event = TelephoneEvent.parse(payload)
        if self._current is not None and ts_diff(timestamp, self._current) <= 0:
            return None
        self._current = timestamp
        return event_to_digit(event.event)


class DtmfSender:
    """Builds the RFC 4733 packet train for one key press on an existing RTP stream.

    The train is one packet per ``packet_ms`` (the first one with the marker bit), each with
    the duration so far, then the end packet three times, all with the timestamp at which the
    event started. The caller sends packet ``i`` at ``i * packet_ms`` after the first; the
    packetizer's clock is moved past the whole train so audio resumes in step with real time.
    """

    END_REPEATS = 3

    def __init__(
        self,
        packetizer: RtpPacketizer,
        payload_type: int = 101,
        *,
        clock_rate: int = 8000,
        packet_ms: int = 20,
        volume: int = 10,
    ) -> None:
        self._packetizer = packetizer
        self._payload_type = payload_type
        self._packet_samples = clock_rate * packet_ms // 1000
        self._clock_rate = clock_rate
        self._volume = volume

    def packets(self, digit: str, duration_ms: int = 100) -> list[RtpPacket]:
        event = digit_to_event(digit)
        total = self._clock_rate * duration_ms // 1000
        step = self._packet_samples
        updates = list(range(step, total, step))
        payloads = [TelephoneEvent(event, False, self._volume, d).serialize() for d in updates]
        payloads += [
            TelephoneEvent(event, True, self._volume, total).serialize()
        ] * self.END_REPEATS
        train = [
            self._packetizer.packetize(p, 0, marker=i == 0, payload_type=self._payload_type)
            for i, p in enumerate(payloads)
        ]
        self._packetizer.advance(len(train) * step)
        return train
