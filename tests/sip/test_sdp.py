"""SDP parsing and offer/answer negotiation."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.sdp import (
    LocalMedia,
    NegotiatedMedia,
    NotAcceptable,
    SdpError,
    SessionDescription,
)
from tests.sip.codecs import CODECS, PCMA, PCMU
from tests.sip.messages import OFFER_SDP


def _offer(
    media: str = "m=audio 40000 RTP/AVP 8 0 101",
    direction: str = "a=sendrecv",
    connection: str = "127.0.0.1",
    extra: str = "",
) -> SessionDescription:
    text = (
        OFFER_SDP.replace("m=audio 40000 RTP/AVP 8 0 101", media)
        .replace("a=sendrecv", direction)
        .replace("c=IN IP4 127.0.0.1", f"c=IN IP4 {connection}")
    )
    return SessionDescription.parse(text + extra)


def _local(**kwargs: object) -> LocalMedia:
    return LocalMedia("127.0.0.1", 30000, CODECS, **kwargs)  # type: ignore[arg-type]


def test_parse_and_round_trip() -> None:
    sdp = SessionDescription.parse(OFFER_SDP)
    audio = sdp.media[0]
    assert (audio.port, audio.formats, audio.direction, audio.ptime) == (
        40000,
        ["8", "0", "101"],
        "sendrecv",
        20,
    )
    assert audio.rtpmap()[101] == ("telephone-event", 8000)
    assert SessionDescription.parse(sdp.serialise()) == sdp


@pytest.mark.parametrize(
    ("text"),
    ["v=0\r\nnonsense\r\n", "m=audio x RTP/AVP 0\r\n", "c=IN\r\n", "o=a b c\r\n", b"\xff"],
)
def test_parse_rejects(text: str | bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


@pytest.mark.parametrize(
    ("media", "prefer", "codec", "pt", "event_pt"),
    [
        ("m=audio 40000 RTP/AVP 8 0 101", (PCMU, PCMA), "PCMU", 0, 101),
        ("m=audio 40000 RTP/AVP 8 0 101", (PCMA, PCMU), "PCMA", 8, 101),
        ("m=audio 40000 RTP/AVP 8", (PCMU, PCMA), "PCMA", 8, None),
        ("m=audio 40000 RTP/AVP 0", (PCMU,), "PCMU", 0, None),  # static PT, no rtpmap needed
    ],
)
def test_answer_prefers_configured_order(
    media: str, prefer: tuple, codec: str, pt: int, event_pt: int | None
) -> None:
    local = LocalMedia("127.0.0.1", 30000, prefer)
    answer, negotiated = local.answer(_offer(media))
    assert (negotiated.codec, negotiated.payload_type, negotiated.telephone_event_pt) == (
        codec,
        pt,
        event_pt,
    )
    assert (negotiated.remote_addr, negotiated.remote_port, negotiated.ptime) == (
        "127.0.0.1",
        40000,
        20,
    )
    expected = [str(pt)] + ([str(event_pt)] if event_pt else [])
    assert answer.media[0].formats == expected and answer.media[0].port == 30000


@pytest.mark.parametrize(
    ("direction", "connection", "ours", "answered", "hold"),
    [
        ("a=sendrecv", "127.0.0.1", "sendrecv", "sendrecv", False),
        ("a=sendonly", "127.0.0.1", "recvonly", "recvonly", True),
        ("a=recvonly", "127.0.0.1", "sendonly", "sendonly", False),
        ("a=inactive", "127.0.0.1", "inactive", "inactive", True),
        ("a=sendrecv", "0.0.0.0", "recvonly", "recvonly", True),  # RFC 2543 hold
    ],
)
def test_answer_mirrors_direction(
    direction: str, connection: str, ours: str, answered: str, hold: bool
) -> None:
    answer, negotiated = _local().answer(_offer(direction=direction, connection=connection))
    assert negotiated.direction == ours and negotiated.on_hold is hold
    assert answer.media[0].direction == answered


@pytest.mark.parametrize(
    "media",
    [
        "m=audio 40000 RTP/AVP 9 18",
        "m=audio 0 RTP/AVP 0",
        "m=video 40000 RTP/AVP 0",
        "m=audio 40000 RTP/SAVP 0",
    ],
)
def test_no_usable_codec(media: str) -> None:
    with pytest.raises(NotAcceptable):
        _local().answer(_offer(media))


def test_refused_streams_keep_their_place() -> None:
    sdp = _offer("m=video 5000 RTP/AVP 96\r\nm=audio 40000 RTP/AVP 0")
    answer, negotiated = _local().answer(sdp)
    assert [m.port for m in answer.media] == [0, 30000]
    assert negotiated.codec == "PCMU"


def test_versions_increase_and_offer_answer_round_trip() -> None:
    caller, callee = _local(), LocalMedia("127.0.0.1", 31000, (PCMA,))
    offer = caller.offer()
    answer, callee_view = callee.answer(SessionDescription.parse(offer.serialise()))
    caller_view = caller.accept(SessionDescription.parse(answer.serialise()))
    assert caller_view.codec == callee_view.codec == "PCMA"
    assert (caller_view.remote_port, callee_view.remote_port) == (31000, 30000)
    assert caller_view.telephone_event_pt == 101
    assert caller.offer().version == offer.version + 1


def test_local_hold_direction() -> None:
    _, negotiated = _local(direction="sendonly").answer(_offer())
    assert negotiated.direction == "sendonly"


def _listening(codec: str, pt: int, direction: str) -> NegotiatedMedia:
    return NegotiatedMedia(codec, pt, 8000, 101, 20, "0.0.0.0", 0, direction)


@pytest.mark.parametrize(
    ("prefer", "direction", "expected"),
    [
        ((PCMU, PCMA), "sendrecv", _listening("PCMU", 0, "recvonly")),
        ((PCMA, PCMU), "sendrecv", _listening("PCMA", 8, "recvonly")),
        ((PCMU, PCMA), "sendonly", _listening("PCMU", 0, "inactive")),
    ],
)
def test_provisional_media_listens_only_until_the_answer(
    prefer: tuple, direction: str, expected: NegotiatedMedia
) -> None:
    local = LocalMedia("127.0.0.1", 30000, prefer, direction=direction)
    assert local.provisional() == expected
    # What it listens for is our offer's first codec and its telephone-events.
    offered = local.offer().media[0].formats
    assert offered[0] == str(expected.payload_type) and offered[-1] == "101"


@settings(max_examples=200, deadline=1000)
@given(st.binary(max_size=600))
def test_fuzz_parse_and_answer_raise_only_sdp_errors(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        _local().answer(SessionDescription.parse(OFFER_SDP.encode()[:40] + data))
