"""Cutting a SIP byte stream (TCP) into messages by Content-Length (RFC 3261 §18.3), sans-I/O."""

from __future__ import annotations

import re

from bridge.sip.message import MAX_MESSAGE_SIZE, SipParseError

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*\r?$", re.I | re.M)


class StreamFramer:
    """Feed bytes as they arrive; get whole messages back. Errors mean: close the connection."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while True:
            # CRLF keep-alives (RFC 5626 §4.4.1) may sit between messages.
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.max_size:
                    raise SipParseError("header section too large on stream")
                return messages
            head = bytes(self._buffer[:end])
            match = _CONTENT_LENGTH.search(head)
            total = end + 4 + (int(match[1]) if match else 0)
            if total > self.max_size:
                raise SipParseError("message too large on stream")
            if len(self._buffer) < total:
                return messages
            messages.append(bytes(self._buffer[:total]))
            del self._buffer[:total]
