"""Header names, list splitting and parameter parsing."""

from __future__ import annotations

import pytest

from bridge.sip.headers import Headers, Via, canonical_name, parse_cseq, split_outside_quotes


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("v", "Via"),
        ("I", "Call-ID"),
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("content-TYPE", "Content-Type"),
        ("l", "Content-Length"),
        ("X-Custom-thing", "X-Custom-Thing"),
    ],
)
def test_canonical_name(raw: str, canonical: str) -> None:
    assert canonical_name(raw) == canonical


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a, b,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ("<sip:a@x;p=1,2>, <sip:b@y>", ["<sip:a@x;p=1,2>", "<sip:b@y>"]),
        ('"esc \\" , still" <sip:a@x>', ['"esc \\" , still" <sip:a@x>']),
    ],
)
def test_split_outside_quotes(text: str, parts: list[str]) -> None:
    assert split_outside_quotes(text, ",") == parts


@pytest.mark.parametrize(
    ("name", "value", "entries"),
    [
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b", 2),
        ("v", "SIP/2.0/UDP a", 1),
        ("Allow", "INVITE, ACK,BYE", 3),
        ("WWW-Authenticate", 'Digest realm="r", nonce="n"', 1),
        ("User-Agent", "thing, v1", 1),
    ],
)
def test_list_headers_split(name: str, value: str, entries: int) -> None:
    headers = Headers([(name, value)])
    assert len(headers.get_all(name)) == entries


def test_lookup_is_case_insensitive_and_set_keeps_position() -> None:
    headers = Headers([("f", "<sip:a@x>"), ("CALL-ID", "1"), ("To", "<sip:b@x>")])
    assert headers.get("call-id") == "1"
    assert "i" in headers
    headers.set("From", "<sip:c@x>")
    assert next(iter(headers)) == ("From", "<sip:c@x>")


@pytest.mark.parametrize(
    ("text", "transport", "host", "port", "branch"),
    [
        ("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx", "UDP", "127.0.0.1", 5060, "z9hG4bKx"),
        ("SIP / 2.0 / tcp host.example;rport", "TCP", "host.example", None, None),
        ("SIP/2.0/UDP [::1]:5062;branch=b", "UDP", "[::1]", 5062, "b"),
    ],
)
def test_via_parse(text: str, transport: str, host: str, port: int | None, branch: str) -> None:
    via = Via.parse(text)
    assert (via.transport, via.host, via.port, via.branch) == (transport, host, port, branch)
    assert Via.parse(str(via)) == via


@pytest.mark.parametrize("text", ["HTTP/1.1 x", "SIP/2.0/UDP", "SIP/2.0/UDP h:99999", "SIP/2.0 h"])
def test_via_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        Via.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("1 INVITE", (1, "INVITE")), ("  42   BYE ", (42, "BYE"))]
)
def test_cseq(text: str, expected: tuple[int, str]) -> None:
    assert parse_cseq(text) == expected


@pytest.mark.parametrize("text", ["", "x INVITE", "1", "99999999999 BYE", "١ BYE"])
def test_cseq_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cseq(text)
