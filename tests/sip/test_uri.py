"""SIP URIs and name-addresses."""

from __future__ import annotations

import pytest

from bridge.sip.uri import NameAddress, SipUri


@pytest.mark.parametrize(
    ("text", "user", "host", "port", "transport"),
    [
        ("sip:bot@127.0.0.1:5062", "bot", "127.0.0.1", 5062, "udp"),
        ("sip:127.0.0.1", None, "127.0.0.1", None, "udp"),
        ("SIP:alice:secret@Example.COM;transport=TCP", "alice", "example.com", None, "tcp"),
        ("sips:x@[::1]:5061?subject=hi", "x", "[::1]", 5061, "udp"),
    ],
)
def test_parse(text: str, user: str | None, host: str, port: int | None, transport: str) -> None:
    uri = SipUri.parse(text)
    assert (uri.user, uri.host, uri.port, uri.transport) == (user, host, port, transport)
    assert SipUri.parse(str(uri)) == uri


@pytest.mark.parametrize("text", ["", "http://x", "sip:", "sip:a@", "sip:h:0", "sip:h:x"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        SipUri.parse(text)


@pytest.mark.parametrize(
    ("text", "display", "user", "tag"),
    [
        ('"Bob, Jr" <sip:bob@x>;tag=abc', '"Bob, Jr"', "bob", "abc"),
        ("<sip:bob@x;lr>", "", "bob", None),
        ("sip:bob@x;tag=9", "", "bob", "9"),
    ],
)
def test_name_address(text: str, display: str, user: str, tag: str | None) -> None:
    address = NameAddress.parse(text)
    assert (address.display, address.uri.user, address.tag) == (display, user, tag)
    assert NameAddress.parse(str(address)) == address
    assert address.with_tag("t").tag == "t"
