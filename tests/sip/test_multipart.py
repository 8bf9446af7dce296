"""multipart/mixed bodies: finding the SDP part beside ISUP or QSIG."""

from __future__ import annotations

import pytest

from bridge.sip.multipart import MultipartError, parse_parts

TYPE = 'multipart/mixed; boundary="b1"'


def test_parts_with_headers_and_binary_data() -> None:
    body = (
        b"ignored preamble\r\n--b1\r\nContent-Type: application/sdp\r\n\r\n"
        b"v=0\r\no=- 1 1 IN IP4 x\r\n\r\n"
        b"--b1  \r\ncontent-type: application/ISUP;version=itu-t92+\r\n"
        b"Content-Disposition: signal;handling=required\r\n\r\n"
        b"\x01\r\n\x00\xff\r\n--b1--\r\nepilogue"
    )
    sdp, isup = parse_parts(body, TYPE)
    assert (sdp.content_type, sdp.body, sdp.required) == (
        "application/sdp",
        b"v=0\r\no=- 1 1 IN IP4 x\r\n",
        False,
    )
    assert (isup.content_type, isup.body, isup.required) == (
        "application/isup",
        b"\x01\r\n\x00\xff",
        True,
    )


def test_nested_multipart_is_flattened_and_bare_parts_are_text() -> None:
    inner = b"--b2\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b2--"
    body = (
        b"--b1\r\n\r\nhello\r\n--b1\r\nContent-Type: multipart/alternative;boundary=b2\r\n\r\n"
        + inner
        + b"\r\n--b1--"
    )
    text, sdp = parse_parts(body, TYPE)
    assert (text.content_type, text.body) == ("text/plain", b"hello")
    assert (sdp.content_type, sdp.body) == ("application/sdp", b"v=0")


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"--b1\r\n\r\nx\r\n--b1--", "multipart/mixed", "without a boundary"),
        (b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n", TYPE, "closing delimiter"),
        (b"--b1\r\nno colon here\r\n\r\nx\r\n--b1--", TYPE, "malformed part header"),
        (b"--b1\r\nContent-Type: application/sdp\r\n--b1--", TYPE, "blank line"),
    ],
)
def test_malformed_multipart(body: bytes, content_type: str, error: str) -> None:
    with pytest.raises(MultipartError, match=error):
        parse_parts(body, content_type)


def test_nesting_is_bounded() -> None:
    body = b"v=0"
    for depth in range(6):
        body = (
            f"--n{depth}\r\nContent-Type: multipart/mixed;boundary=n{depth - 1}\r\n\r\n".encode()
            + body
        )
        body += f"\r\n--n{depth}--".encode()
    with pytest.raises(MultipartError, match="nested"):
        parse_parts(body, "multipart/mixed;boundary=n5")
