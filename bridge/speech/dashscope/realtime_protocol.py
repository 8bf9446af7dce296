"""Sans-I/O envelope code for DashScope's "realtime" protocol (Qwen-TTS / Qwen-ASR realtime).

Flat JSON events with ``type`` and a unique ``event_id``; audio is base64 inside JSON; one
socket is one session. Shared by both clients and, from the server side, by the emulator.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from bridge.speech.dashscope.errors import DashScopeError, ProtocolError, task_failed


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def encode(type_: str, **fields: Any) -> str:
    """An event with a fresh ``event_id`` (client and server events look alike)."""
    return json.dumps({"event_id": new_id("event"), "type": type_, **fields})


def decode(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        raise ProtocolError("binary frame on a realtime socket")
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("event without a type")
    return event


def error_event(code: str, message: str, *, fatal: bool = False, event_id: str = "") -> str:
    error = {
        "type": "server_error" if fatal else "invalid_request_error",
        "code": code,
        "message": message,
        "param": None,
        "event_id": event_id,
    }
    return encode("error", error=error)


def error_from(event: dict[str, Any]) -> DashScopeError:
    error = event.get("error") or {}
    return task_failed(str(error.get("code", "Unknown")), str(error.get("message", "")))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class RealtimeClient:
    """Client-side session bookkeeping: the handshake events and error handling."""

    def __init__(self) -> None:
        self.session_id = ""
        self.configured = False
        self.finished = False

    def receive(self, text: str | bytes) -> dict[str, Any]:
        """Parse one server event; raises on ``error`` events and protocol breaches."""
        event = decode(text)
        kind = event["type"]
        if not self.session_id and kind != "session.created" and kind != "error":
            raise ProtocolError(f"{kind} before session.created")
        if kind == "session.created":
            self.session_id = str(event.get("session", {}).get("id", ""))
        elif kind == "session.updated":
            self.configured = True
        elif kind == "session.finished":
            self.finished = True
        elif kind == "error":
            raise error_from(event)
        return event
