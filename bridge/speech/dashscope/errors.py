"""DashScope failures as :class:`SpeechError` subclasses, so the call can react by kind."""

from __future__ import annotations

from bridge.speech.base import SpeechError


class DashScopeError(SpeechError):
    """Any DashScope failure; ``retryable`` tells the call a fresh attempt may succeed."""

    retryable = True


class AuthError(DashScopeError):
    """Handshake refused with 401/403: the key is wrong or belongs to another region."""

    retryable = False

    def __init__(self, status: int, region: str) -> None:
        super().__init__(
            f"DashScope refused the API key (HTTP {status}): key/region mismatch or invalid key; "
            f"check that DASHSCOPE_API_KEY belongs to the {region!r} region/workspace"
        )
        self.status = status


class RateLimitError(DashScopeError):
    """HTTP 429 or a throttling task failure persisted through the back-off retries."""


class TaskFailedError(DashScopeError):
    """The server ended the task with ``task-failed`` (or a realtime ``error`` event)."""

    def __init__(self, code: str, message: str, task_id: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" (task {task_id})" if task_id else ""))
        self.code = code
        self.message = message
        self.task_id = task_id
        self.retryable = code not in {"InvalidApiKey", "AccessDenied", "InvalidParameter"}


class ProtocolError(DashScopeError):
    """Close code 1007 or an unexpected message: the request or reply broke the protocol."""

    retryable = False


class ConnectionLostError(DashScopeError):
    """The socket closed before the task or session ended."""


def task_failed(code: str, message: str, task_id: str = "") -> DashScopeError:
    """Map a server failure to the most specific error class."""
    if code.startswith("Throttling") or "rate limit" in message.lower():
        return RateLimitError(f"{code}: {message}")
    return TaskFailedError(code, message, task_id)
