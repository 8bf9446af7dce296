"""multipart/mixed message bodies (RFC 2046 §5.1, RFC 5621), as SIP-I carriers and QSIG
gateways send them: the SDP beside an encapsulated ISUP or QSIG message.

The bridge only uses the SDP part. Other parts are ignored unless they say
``Content-Disposition: ...;handling=required`` (RFC 3261 §20.11), which makes the request
unacceptable (415) since we cannot act on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sip.headers import Headers, get_param, parse_params

MULTIPART = ("multipart/mixed", "multipart/related", "multipart/alternative")
UNDERSTOOD = ("application/sdp",)
MAX_NESTING = 3


class MultipartError(ValueError):
    """A body that is not valid multipart (no boundary, no closing delimiter...)."""


@dataclass(frozen=True)
class Part:
    headers: Headers
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "text/plain").partition(";")[0].strip().lower()

    @property
    def required(self) -> bool:
        """Whether the sender needs us to understand this part (``handling=required``)."""
        disposition = self.headers.get("Content-Disposition") or ""
        handling = get_param(parse_params(disposition.partition(";")[2]), "handling")
        return (handling or "").lower() == "required"


def boundary(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type (quotes removed)."""
    found = get_param(parse_params(content_type.partition(";")[2]), "boundary")
    if not found or not found.strip('"'):
        raise MultipartError("multipart body without a boundary parameter")
    return found.strip('"')


def parse_parts(body: bytes, content_type: str, depth: int = 0) -> list[Part]:
    """Split ``body`` into its parts; nested multiparts are flattened (RFC 5621 §3.1)."""
    if depth > MAX_NESTING:
        raise MultipartError(f"multipart nested more than {MAX_NESTING} deep")
    delimiter = b"--" + boundary(content_type).encode()
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise MultipartError("multipart body without its closing delimiter")
    parts: list[Part] = []
    for chunk in chunks[1:-1]:  # before the first delimiter: preamble; after the last: epilogue
        chunk = chunk.partition(b"\n")[2]  # the rest of the delimiter line
        if chunk.startswith((b"\r\n", b"\n")):  # no headers: text/plain (RFC 2046 §5.1.1)
            head, data = b"", chunk.partition(b"\n")[2]
        else:
            head, sep, data = chunk.partition(b"\r\n\r\n")
            if not sep:
                head, sep, data = chunk.partition(b"\n\n")
            if not sep:
                raise MultipartError("a part without a blank line after its headers")
        # The line break before the next delimiter belongs to the delimiter.
        data = data.removesuffix(b"\n").removesuffix(b"\r")
        headers = Headers()
        for line in head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
            name, colon, value = line.partition(":")
            if line.strip() and not colon:
                raise MultipartError(f"malformed part header {line[:40]!r}")
            if line.strip():
                headers.add(name, value)
        part = Part(headers, data)
        if part.content_type in MULTIPART:
            parts += parse_parts(part.body, headers.get("Content-Type") or "", depth + 1)
        else:
            parts.append(part)
    return parts
