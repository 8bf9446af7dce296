"""Canned SIP messages shared by the SIP tests."""

from __future__ import annotations

OFFER_SDP = (
    "v=0\r\n"
    "o=caller 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 8 0 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bK-1",
    call_id: str = "call-1",
    cseq: int = 1,
    from_tag: str = "ftag",
    to_tag: str = "",
    body: str = "",
    content_type: str = "application/sdp",
    extra: str = "",
    uri: str = "sip:bot@127.0.0.1:5062",
    via_port: int = 5070,
) -> bytes:
    """A minimal valid request as a UDP peer on 127.0.0.1 would send it."""
    to_params = f";tag={to_tag}" if to_tag else ""
    body_headers = f"Content-Type: {content_type}\r\n" if body else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Caller" <sip:caller@127.0.0.1:{via_port}>;tag={from_tag}\r\n'
        f"To: <sip:bot@127.0.0.1:5062>{to_params}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:{via_port}>\r\n"
        f"{extra}{body_headers}"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()
