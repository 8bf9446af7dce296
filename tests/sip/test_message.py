"""Parsing and serialising SIP messages, including hostile input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.sip.message import Message, Request, Response, SipParseError, parse_message
from tests.sip.messages import OFFER_SDP, request

COMPACT_INVITE = (
    b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb\r\n"
    b"max-forwards: 70\r\n"
    b'f: "A, B" <sip:a@x>;tag=1\r\n'
    b"t: <sip:bot@127.0.0.1>\r\n"
    b"i: abc\r\n"
    b"CSEQ: 7 INVITE\r\n"
    b"Subject: folded\r\n  continuation\r\n"
    b"l: 0\r\n\r\n"
)


def test_parses_compact_and_multi_value_headers() -> None:
    message = parse_message(COMPACT_INVITE)
    assert isinstance(message, Request)
    assert [v.branch for v in message.vias] == ["z9hG4bKa", "z9hG4bKb"]
    assert message.from_.display == '"A, B"' and message.from_.tag == "1"
    assert (message.call_id, message.cseq) == ("abc", (7, "INVITE"))
    assert message.headers.get("subject") == "folded continuation"


def test_round_trip() -> None:
    original = parse_message(request(body=OFFER_SDP))
    again = parse_message(original.serialise())
    assert isinstance(again, Request)
    assert again.headers == original.headers and again.body == OFFER_SDP.encode()


def test_response_round_trip() -> None:
    response = Response(status=180)
    response.headers.add("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")
    for name, value in [("From", "<sip:a@h>;tag=1"), ("To", "<sip:b@h>"), ("Call-ID", "c")]:
        response.headers.add(name, value)
    response.headers.add("CSeq", "1 INVITE")
    parsed = parse_message(response.serialise())
    assert isinstance(parsed, Response)
    assert (parsed.status, parsed.reason) == (180, "Ringing")


def test_datagram_body_longer_than_declared_is_truncated() -> None:
    data = request(body="abc").replace(b"Content-Length: 3", b"Content-Length: 2")
    assert parse_message(data).body == b"ab"


def _without(header: bytes) -> bytes:
    lines = request().split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.startswith(header))


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (request(body="abc").replace(b"Content-Length: 3", b"Content-Length: 9"), 400, "shorter"),
        (request().replace(b"Content-Length: 0", b"Content-Length: x"), 400, "Content-Length"),
        (request(body="x" * 70000), 513, "too large"),
        (_without(b"Via"), 400, "Missing Via header"),
        (_without(b"Call-ID"), 400, "Missing Call-ID header"),
        (_without(b"Max-Forwards"), 400, "Missing Max-Forwards header"),
        (_without(b"CSeq"), 400, "Missing CSeq header"),
        (request().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), 400, "CSeq method"),
        (request().replace(b"From: ", b"From: <<"), 400, ""),
        (request().replace(b"Max-Forwards: 70", b"Max-Forwards: many"), 400, ""),
        (request().replace(b"Call-ID: call-1", b"Call-ID: \xff\xfe"), 400, "UTF-8"),
        (request().replace(b"Call-ID: call-1", b"Call-ID call-1"), 400, "malformed"),
        (b"\xff\xfe garbage", None, ""),
        (b"GET / HTTP/1.1\r\n\r\n", None, ""),
        (b"SIP/2.0 200 OK\r\n\r\n", None, "Missing"),
        (b"", None, ""),
    ],
)
def test_rejects(data: bytes, status: int | None, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    assert caught.value.status == status
    assert reason in caught.value.reason
    if status is not None:
        assert caught.value.request is not None


def test_framed_message_must_match_content_length() -> None:
    with pytest.raises(SipParseError):
        parse_message(request(body="abc").replace(b"Length: 3", b"Length: 2"), framed=True)


def _mutations() -> st.SearchStrategy[bytes]:
    base = request(body=OFFER_SDP)

    def mutate(cuts: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(base)
        for position, length, insert in cuts:
            position %= len(data) + 1
            data[position : position + length] = insert
        return bytes(data)

    cut = st.tuples(st.integers(0, len(base)), st.integers(0, 8), st.binary(max_size=8))
    special = st.sampled_from([b"\r\n", b":", b",", b"<", b'"', b";", b"\xff", b" ", b"\x00"])
    special_cut = st.tuples(st.integers(0, len(base)), st.integers(0, 2), special)
    return st.lists(st.one_of(cut, special_cut), min_size=1, max_size=6).map(mutate)


FUZZ = settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.binary(max_size=2000), _mutations()))
def test_fuzz_only_raises_parse_errors(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError:
        return
    # Whatever parsed must serialise and parse back to the same thing.
    again = parse_message(message.serialise())
    assert _without_length(again) == _without_length(message) and again.body == message.body


def _without_length(message: Message) -> list[tuple[str, str]]:
    return [(n, v) for n, v in message.headers if n != "Content-Length"]
