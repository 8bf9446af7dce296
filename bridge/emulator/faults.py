"""Fault knobs of the emulator, settable at construction and over ``POST /emulator/faults``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Faults:
    """What to break. Frame counts are per connection: audio frames sent (TTS) or received (ASR).

    ``handshake_failures`` limits how many upcoming handshakes get ``handshake_status``
    (``None``: all of them), so back-off can be seen to succeed.
    """

    first_packet_delay: float = 0.0  # seconds before the first audio/result of each task
    fail_after_frames: int | None = None  # task-failed / error event after N audio frames
    drop_after_frames: int | None = None  # abort the TCP connection after N audio frames
    handshake_status: int | None = None  # e.g. 401, 403, 429, 503 instead of upgrading
    handshake_failures: int | None = None
    rtf: float | None = None  # pace synthesized audio at this real-time factor (> 1 = slow)
    error_code: str = "InternalError"
    error_message: str = "emulated failure"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        """Build from a JSON object; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault knobs: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def take_handshake_fault(self) -> int | None:
        """The status to answer this handshake with, consuming one scheduled failure."""
        if self.handshake_status is None:
            return None
        if self.handshake_failures is not None:
            if self.handshake_failures <= 0:
                return None
            self.handshake_failures -= 1
        return self.handshake_status
