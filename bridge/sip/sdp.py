"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one audio stream.

The bridge speaks G.711 plus RFC 4733 telephone-events. Negotiation picks the first codec of
the configured preference order that the peer offers, mirrors the direction attribute so hold
and resume work, and reports the outcome as :class:`NegotiatedMedia` for the RTP layer.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bridge.media.g711 import codec_by_payload_type

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# The peer's direction seen from our side.
_MIRROR = dict(zip(DIRECTIONS, ("sendrecv", "recvonly", "sendonly", "inactive"), strict=True))
TELEPHONE_EVENT = "telephone-event"
HOLD_ADDRESSES = ("0.0.0.0", "::")


class SdpError(ValueError):
    """Malformed SDP."""


class NotAcceptable(SdpError):
    """The offer has no usable audio stream or codec (answer 488)."""


class RtpCodec(Protocol):
    """What negotiation needs from a codec of the media layer's registry."""

    @property
    def name(self) -> str: ...

    @property
    def payload_type(self) -> int: ...

    @property
    def clock_rate(self) -> int: ...


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        return next((v for k, v in self.attributes if k == name), None)

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """Payload type → (encoding name, clock rate) from ``a=rtpmap``."""
        mapping: dict[int, tuple[str, int]] = {}
        for key, value in self.attributes:
            if key != "rtpmap" or not value:
                continue
            pt, _, encoding = value.partition(" ")
            name, _, rest = encoding.partition("/")
            rate = rest.partition("/")[0]
            if pt.isascii() and pt.isdigit() and rate.isascii() and rate.isdigit():
                mapping[int(pt)] = (name.strip(), int(rate))
        return mapping

    @property
    def direction(self) -> str:
        return next((k for k, _ in self.attributes if k in DIRECTIONS), "")

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime") or ""
        return int(value) if value.isascii() and value.isdigit() and 0 < int(value) < 1000 else None


@dataclass
class SessionDescription:
    origin_user: str = "-"
    session_id: str = "0"
    version: int = 0
    origin_address: str = "0.0.0.0"
    name: str = "-"
    connection: str | None = None
    media: list[MediaDescription] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        try:
            text = data.decode() if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            raise SdpError("SDP is not UTF-8") from None
        sdp = cls()
        current: MediaDescription | None = None
        for line in text.replace("\r\n", "\n").split("\n"):
            kind, eq, value = line.strip().partition("=")
            if not line.strip():
                continue
            if not eq or len(kind) != 1:
                raise SdpError(f"bad SDP line {line[:40]!r}")
            if kind == "o":
                sdp._parse_origin(value)
            elif kind == "s":
                sdp.name = value
            elif kind == "c":
                address = _parse_connection(value)
                if current is None:
                    sdp.connection = address
                else:
                    current.connection = address
            elif kind == "m":
                current = _parse_media(value)
                sdp.media.append(current)
            elif kind == "a":
                name, colon, attr = value.partition(":")
                (current.attributes if current else sdp.attributes).append(
                    (name, attr if colon else None)
                )
        return sdp

    def _parse_origin(self, value: str) -> None:
        parts = value.split()
        if len(parts) != 6 or not parts[2].isascii() or not parts[2].isdigit():
            raise SdpError(f"bad o= line {value!r}")
        self.origin_user, self.session_id, self.origin_address = parts[0], parts[1], parts[5]
        self.version = int(parts[2])

    def serialise(self) -> bytes:
        lines = [
            "v=0",
            f"o={self.origin_user} {self.session_id} {self.version} "
            f"{_addr_type(self.origin_address)} {self.origin_address}",
            f"s={self.name}",
        ]
        if self.connection:
            lines.append(f"c={_addr_type(self.connection)} {self.connection}")
        lines.append("t=0 0")
        lines += _attribute_lines(self.attributes)
        for m in self.media:
            lines.append(f"m={m.media} {m.port} {m.proto} {' '.join(m.formats)}")
            if m.connection:
                lines.append(f"c={_addr_type(m.connection)} {m.connection}")
            lines += _attribute_lines(m.attributes)
        return ("\r\n".join(lines) + "\r\n").encode()

    def connection_for(self, media: MediaDescription) -> str | None:
        return media.connection or self.connection


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN":
        raise SdpError(f"bad c= line {value!r}")
    return parts[2].partition("/")[0]


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    port = parts[1].partition("/")[0] if len(parts) > 3 else ""
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise SdpError(f"bad m= line {value!r}")
    return MediaDescription(parts[0], int(port), parts[2], parts[3:])


def _addr_type(address: str) -> str:
    return "IN IP6" if ":" in address else "IN IP4"


def _attribute_lines(attributes: list[tuple[str, str | None]]) -> list[str]:
    return [f"a={k}" if v is None else f"a={k}:{v}" for k, v in attributes]


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """The agreed audio stream. ``direction`` is ours: ``sendonly`` means we send, not hear."""

    codec: str
    payload_type: int
    clock_rate: int
    telephone_event_pt: int | None
    ptime: int
    remote_addr: str
    remote_port: int
    direction: str

    @property
    def may_send(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def on_hold(self) -> bool:
        return not self.may_send


@dataclass
class LocalMedia:
    """Our side of a call's SDP: where we receive, what we accept, and the o= version."""

    address: str
    port: int
    codecs: Sequence[RtpCodec]
    ptime: int = 20
    telephone_event_pt: int = 101
    direction: str = "sendrecv"
    session_id: str = field(default_factory=lambda: str(secrets.randbelow(2**31)))
    version: int = 0

    def description(
        self, formats: list[str], attributes: list[tuple[str, str | None]]
    ) -> SessionDescription:
        """A new SDP with the next o= version (RFC 3264 §8 requires one per change)."""
        self.version += 1
        media = MediaDescription("audio", self.port, "RTP/AVP", formats, None, attributes)
        return SessionDescription(
            "bridge", self.session_id, self.version, self.address, "-", self.address, [media]
        )

    def offer(self) -> SessionDescription:
        formats = [str(c.payload_type) for c in self.codecs]
        attributes: list[tuple[str, str | None]] = [
            ("rtpmap", f"{c.payload_type} {c.name}/{c.clock_rate}") for c in self.codecs
        ]
        formats.append(str(self.telephone_event_pt))
        attributes += _event_attributes(self.telephone_event_pt, "0-16")
        attributes += [("ptime", str(self.ptime)), (self.direction, None)]
        return self.description(formats, attributes)

    def provisional(self) -> NegotiatedMedia:
        """The media of a call whose offer is ours and whose answer has not come (a late
        offer): our first codec, listening only, towards an unknown address (port 0).

        The offerer sends once it has the answer (RFC 3264 §7), which says where and in which
        codec; until then it must be ready to receive what it offered (§5.1).
        """
        if not self.codecs:
            raise NotAcceptable("no codec configured to offer")
        codec = self.codecs[0]
        return NegotiatedMedia(
            codec.name,
            codec.payload_type,
            codec.clock_rate,
            self.telephone_event_pt,
            self.ptime,
            HOLD_ADDRESSES[0],
            0,
            _intersect("recvonly", self.direction),
        )

    def answer(self, offer: SessionDescription) -> tuple[SessionDescription, NegotiatedMedia]:
        """Answer ``offer``; raise :class:`NotAcceptable` when no audio stream is usable."""
        for index, media in enumerate(offer.media):
            choice = self._choose(offer, media)
            if choice is None:
                continue
            negotiated, event_fmtp = choice
            formats = [str(negotiated.payload_type)]
            attributes: list[tuple[str, str | None]] = [
                ("rtpmap", f"{negotiated.payload_type} {negotiated.codec}/{negotiated.clock_rate}")
            ]
            if negotiated.telephone_event_pt is not None:
                formats.append(str(negotiated.telephone_event_pt))
                attributes += _event_attributes(negotiated.telephone_event_pt, event_fmtp)
            attributes += [("ptime", str(negotiated.ptime)), (negotiated.direction, None)]
            answer = self.description(formats, attributes)
            # Every offered m-line gets an answer line; the ones we refuse get port 0.
            refused = [replace(m, port=0, attributes=[]) for m in offer.media]
            answer.media = [*refused[:index], answer.media[0], *refused[index + 1 :]]
            return answer, negotiated
        raise NotAcceptable("no common audio codec")

    def accept(self, answer: SessionDescription) -> NegotiatedMedia:
        """Read the peer's answer to our offer; raise :class:`NotAcceptable` if unusable."""
        for media in answer.media:
            choice = self._choose(answer, media)
            if choice is not None:
                return choice[0]
        raise NotAcceptable("answer has no usable audio stream")

    def _choose(
        self, sdp: SessionDescription, media: MediaDescription
    ) -> tuple[NegotiatedMedia, str] | None:
        """Our codec and direction for one m-line (None: unusable), plus the events fmtp."""
        address = sdp.connection_for(media)
        if media.media != "audio" or media.port == 0 or media.proto != "RTP/AVP" or not address:
            return None
        rtpmap = media.rtpmap()
        offered: dict[tuple[str, int], int] = {}
        for fmt in media.formats:
            if not (fmt.isascii() and fmt.isdigit()):
                continue
            pt = int(fmt)
            known = codec_by_payload_type(pt) if pt < 96 else None  # static, no rtpmap needed
            name, rate = rtpmap.get(pt) or ((known.name, known.clock_rate) if known else ("", 0))
            offered.setdefault((name.upper(), rate), pt)
        codec = next((c for c in self.codecs if (c.name.upper(), c.clock_rate) in offered), None)
        if codec is None:
            return None
        event_pt = offered.get((TELEPHONE_EVENT.upper(), codec.clock_rate))
        event_fmtp = next(
            (
                v.partition(" ")[2]
                for k, v in media.attributes
                if k == "fmtp" and v and v.partition(" ")[0] == str(event_pt)
            ),
            "0-16",
        )
        remote_direction = media.direction or "sendrecv"
        if address in HOLD_ADDRESSES and remote_direction == "sendrecv":
            remote_direction = "sendonly"  # RFC 2543 hold: "do not send to me"
        negotiated = NegotiatedMedia(
            codec.name,
            offered[(codec.name.upper(), codec.clock_rate)],
            codec.clock_rate,
            event_pt,
            media.ptime or self.ptime,
            address,
            media.port,
            _intersect(_MIRROR[remote_direction], self.direction),
        )
        return negotiated, event_fmtp


def _event_attributes(pt: int, events: str) -> list[tuple[str, str | None]]:
    return [("rtpmap", f"{pt} {TELEPHONE_EVENT}/8000"), ("fmtp", f"{pt} {events}")]


def _intersect(a: str, b: str) -> str:
    """The direction allowed by both: sending needs both to send, receiving both to receive."""
    send = a in ("sendrecv", "sendonly") and b in ("sendrecv", "sendonly")
    receive = a in ("sendrecv", "recvonly") and b in ("sendrecv", "recvonly")
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (send, receive), "inactive"
    )
