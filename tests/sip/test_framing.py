"""Stream framing by Content-Length."""

from __future__ import annotations

import pytest

from bridge.sip.framing import StreamFramer
from bridge.sip.message import SipParseError, parse_message
from tests.sip.messages import OFFER_SDP, request

INVITE = request(body=OFFER_SDP)
BYE = request("BYE", cseq=2)


@pytest.mark.parametrize("chunk", [1, 7, 100, len(INVITE) + len(BYE)])
def test_splits_any_chunking(chunk: int) -> None:
    stream = b"\r\n\r\n" + INVITE + b"\r\n" + BYE
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += framer.feed(stream[i : i + chunk])
    assert out == [INVITE, BYE]
    assert parse_message(out[0], framed=True).body == OFFER_SDP.encode()


def test_compact_content_length() -> None:
    data = INVITE.replace(b"Content-Length:", b"l:")
    assert StreamFramer().feed(data) == [data]


@pytest.mark.parametrize(
    "data",
    [
        b"X" * 70000,
        request().replace(b"Content-Length: 0", b"Content-Length: 999999"),
    ],
)
def test_oversized_input_is_an_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        StreamFramer().feed(data)
