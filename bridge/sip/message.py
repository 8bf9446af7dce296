"""SIP messages: a strict but forgiving parser and a serialiser (RFC 3261 §7, §18.3, §20).

The parser never trusts its input: anything malformed raises :class:`SipParseError`, which
says whether a ``400``/``513`` can be sent back (the request line parsed) or the datagram
should just be dropped. Structured headers every layer relies on (Via, From, To, CSeq...) are
validated here, so code above can read them without its own error handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bridge.sip.headers import Headers, Via, canonical_name, is_token, parse_cseq
from bridge.sip.uri import NameAddress, SipUri

MAX_MESSAGE_SIZE = 65536
MANDATORY_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards")
REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    513: "Message Too Large",
    603: "Decline",
}
_REQUEST_LINE = re.compile(r"([!-~]+) (\S+) SIP/2\.0")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6]\d\d) ?(.*)")


class SipParseError(ValueError):
    """Unparseable input. ``status`` is the response to send (None: drop silently).

    ``request`` holds whatever headers were read when the request line was valid, so the
    error response can copy Via, From, To, Call-ID and CSeq.
    """

    def __init__(self, reason: str, status: int | None = None, request: Request | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status if request is not None else None
        self.request = request


@dataclass(eq=False)
class Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        return Via.parse(self.headers.get("Via") or "")

    @property
    def from_(self) -> NameAddress:
        return NameAddress.parse(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddress:
        return NameAddress.parse(self.headers.get("To") or "")

    @property
    def contact(self) -> NameAddress | None:
        value = self.headers.get("Contact")
        return NameAddress.parse(value) if value and value != "*" else None

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()

    def start_line(self) -> str:
        raise NotImplementedError

    def serialise(self) -> bytes:
        """Wire form; Content-Length always reflects the body."""
        lines = [self.start_line()]
        lines += [f"{n}: {v}" for n, v in self.headers if n != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(eq=False)
class Request(Message):
    method: str = "OPTIONS"
    uri: str = ""

    def start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    @property
    def max_forwards(self) -> int:
        return int(self.headers.get("Max-Forwards") or "70")


@dataclass(eq=False)
class Response(Message):
    status: int = 200
    reason: str = ""

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason or REASONS.get(self.status, '')}".rstrip()


def parse_message(
    data: bytes, *, max_size: int = MAX_MESSAGE_SIZE, framed: bool = False
) -> Request | Response:
    """Parse one message. ``framed``: the stream already cut it at Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    first_line = head.split(b"\n", 1)[0].rstrip(b"\r")
    message = _start_line(first_line)
    request = message if isinstance(message, Request) else None
    if len(data) > max_size:
        raise SipParseError("message too large", 513, request)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8", 400, request) from None
    lines = re.split(r"\r?\n", text)[1:]
    for line in _unfold(lines):
        name, colon, value = line.partition(":")
        if not colon or not is_token(name.strip()):
            raise SipParseError(f"malformed header line {line[:40]!r}", 400, request)
        message.headers.add(name, value)
    message.body = _checked_body(message, body, request, framed)
    _validate(message, request)
    return message


def _start_line(line: bytes) -> Request | Response:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("start line is not UTF-8") from None
    if match := _STATUS_LINE.fullmatch(text):
        return Response(status=int(match[1]), reason=match[2])
    if (match := _REQUEST_LINE.fullmatch(text)) and is_token(match[1]):
        return Request(method=match[1], uri=match[2])
    raise SipParseError(f"bad start line {text[:40]!r}")


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (leading whitespace) onto the header they continue."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:
            out[-1] += " " + line.strip()
        elif line:
            out.append(line)
    return out


def _checked_body(message: Message, body: bytes, request: Request | None, framed: bool) -> bytes:
    declared = message.headers.get("Content-Length")
    if declared is None:
        return body
    if not (declared.isascii() and declared.isdigit()) or len(declared) > 9:
        raise SipParseError("bad Content-Length", 400, request)
    length = int(declared)
    if length > len(body) or (framed and length < len(body)):
        raise SipParseError("body shorter than Content-Length", 400, request)
    return body[:length]  # datagram: bytes past Content-Length are discarded (§18.3)


def _validate(message: Request | Response, request: Request | None) -> None:
    names = MANDATORY_HEADERS if request else MANDATORY_HEADERS[:-1]
    for name in names:
        if not message.headers.get(name):
            raise SipParseError(f"Missing {canonical_name(name)} header", 400, request)
    try:
        message.vias  # noqa: B018 - validation by parsing
        message.from_  # noqa: B018
        message.to  # noqa: B018
        method = message.cseq[1]
        if request is not None:
            request.request_uri  # noqa: B018
            if request.max_forwards < 0 or request.max_forwards > 255:
                raise ValueError("Max-Forwards out of range")
    except ValueError as exc:
        raise SipParseError(str(exc), 400, request) from None
    if request is not None and method != request.method:
        raise SipParseError("CSeq method does not match the request", 400, request)
