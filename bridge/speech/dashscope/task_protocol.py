"""Sans-I/O envelope code and client state machine for DashScope's "task" protocol.

Used by CosyVoice TTS and Fun-ASR/Paraformer ASR on ``/api-ws/v1/inference`` and, from the
server side, by the emulator. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bridge.speech.dashscope.errors import DashScopeError, ProtocolError, task_failed

RUN, CONTINUE, FINISH = "run-task", "continue-task", "finish-task"
STARTED, GENERATED, FINISHED, FAILED = (
    "task-started",
    "result-generated",
    "task-finished",
    "task-failed",
)
ACTIONS = frozenset({RUN, CONTINUE, FINISH})
EVENTS = frozenset({STARTED, GENERATED, FINISHED, FAILED})


def new_task_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Directive:
    """A client → server message."""

    action: str
    task_id: str
    payload: dict[str, Any]
    streaming: str = "duplex"

    def encode(self) -> str:
        header = {"action": self.action, "task_id": self.task_id, "streaming": self.streaming}
        return json.dumps({"header": header, "payload": self.payload}, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Event:
    """A server → client message."""

    event: str
    task_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None

    def encode(self) -> str:
        header: dict[str, Any] = {"task_id": self.task_id, "event": self.event}
        if self.error_code is not None:
            header["error_code"] = self.error_code
            header["error_message"] = self.error_message or ""
        header["attributes"] = self.attributes
        return json.dumps({"header": header, "payload": self.payload}, ensure_ascii=False)

    @property
    def output(self) -> dict[str, Any]:
        return self.payload.get("output") or {}

    @property
    def usage(self) -> dict[str, Any]:
        return self.payload.get("usage") or {}


def _load(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("header"), dict):
        raise ProtocolError("message has no header object")
    payload = message.get("payload", {})
    if not isinstance(payload, dict):
        raise ProtocolError("payload is not an object")
    return message["header"], payload


def parse_directive(text: str) -> Directive:
    header, payload = _load(text)
    action, task_id = header.get("action"), header.get("task_id")
    if action not in ACTIONS:
        raise ProtocolError(f"unknown action {action!r}")
    if not isinstance(task_id, str) or not task_id:
        raise ProtocolError("header.task_id is missing")
    return Directive(action, task_id, payload, str(header.get("streaming", "duplex")))


def parse_event(text: str) -> Event:
    header, payload = _load(text)
    event, task_id = header.get("event"), header.get("task_id")
    if event not in EVENTS:
        raise ProtocolError(f"unknown event {event!r}")
    return Event(
        event,
        str(task_id or ""),
        payload,
        header.get("attributes") or {},
        header.get("error_code"),
        header.get("error_message"),
    )


def run_task(
    task_id: str,
    *,
    model: str,
    task: str,
    function: str,
    parameters: dict[str, Any],
    resources: list[dict[str, str]] | None = None,
) -> Directive:
    payload: dict[str, Any] = {
        "task_group": "audio",
        "task": task,
        "function": function,
        "model": model,
        "parameters": parameters,
        "input": {},
    }
    if resources:
        payload["resources"] = resources
    return Directive(RUN, task_id, payload)


class TaskState(Enum):
    IDLE = "idle"  # connection open, no task running: a run-task may be sent
    STARTING = "starting"  # run-task sent, waiting for task-started
    RUNNING = "running"
    FINISHING = "finishing"  # finish-task sent
    FAILED = "failed"  # task-failed or protocol breach: the connection must not be reused


class TaskClient:
    """Client side of one connection: builds directives and checks the server's events.

    Enforces the documented rules: nothing before ``task-started``, a fresh task id per task,
    the same id on every message of a task, and no reuse after a failure.
    """

    def __init__(self) -> None:
        self.state = TaskState.IDLE
        self.task_id = ""
        self.failure: DashScopeError | None = None
        self.tasks_run = 0

    @property
    def reusable(self) -> bool:
        return self.state is TaskState.IDLE

    def start(self, **kwargs: Any) -> str:
        """Encode a ``run-task``; kwargs as :func:`run_task` (without the id)."""
        self._expect(TaskState.IDLE, "run-task")
        self.task_id = new_task_id()
        self.state = TaskState.STARTING
        self.tasks_run += 1
        return run_task(self.task_id, **kwargs).encode()

    def continue_task(self, input_: dict[str, Any]) -> str:
        self._expect(TaskState.RUNNING, "continue-task")
        return Directive(CONTINUE, self.task_id, {"input": input_}).encode()

    def finish(self, cancel: bool = False) -> str:
        self._expect(TaskState.RUNNING, "finish-task")
        self.state = TaskState.FINISHING
        return Directive(
            FINISH, self.task_id, {"input": {"directive": "cancel"} if cancel else {}}
        ).encode()

    @property
    def can_send_audio(self) -> bool:
        return self.state is TaskState.RUNNING

    def receive(self, text: str) -> Event:
        """Parse and check one server text frame; raises on failure or protocol breach."""
        try:
            event = parse_event(text)
            if event.task_id != self.task_id:
                raise ProtocolError(f"event for task {event.task_id!r}, expected {self.task_id!r}")
            if self.state is TaskState.STARTING and event.event not in (STARTED, FAILED):
                raise ProtocolError(f"{event.event} before task-started")
        except ProtocolError as exc:
            self.state, self.failure = TaskState.FAILED, exc
            raise
        if event.event == STARTED:
            self.state = TaskState.RUNNING
        elif event.event == FINISHED:
            self.state = TaskState.IDLE
        elif event.event == FAILED:
            self.state = TaskState.FAILED
            self.failure = task_failed(
                event.error_code or "Unknown", event.error_message or "", event.task_id
            )
            raise self.failure
        return event

    def receive_binary(self) -> None:
        if self.state not in (TaskState.RUNNING, TaskState.FINISHING):
            self.failure = ProtocolError(f"binary frame in state {self.state.value}")
            self.state = TaskState.FAILED
            raise self.failure

    def connection_lost(self) -> None:
        self.state = TaskState.FAILED

    def _expect(self, state: TaskState, what: str) -> None:
        if self.state is not state:
            raise ProtocolError(f"cannot send {what} in state {self.state.value}")
