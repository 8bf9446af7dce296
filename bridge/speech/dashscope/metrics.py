"""Per-stream figures the call can read: first-packet latency, real-time factor, billed usage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class StreamMetrics:
    """Filled in by the client as a stream runs; times are from the loop's monotonic clock.

    ``first_packet_latency`` is first text sent → first audio received (TTS), or first audio
    sent → first non-empty transcript (ASR). ``rtf`` is processing time over audio time.
    """

    started_at: float | None = None
    first_packet_at: float | None = None
    finished_at: float | None = None
    audio_seconds: float = 0.0
    billed_characters: int = 0
    billed_audio_seconds: int = 0
    tasks: int = 0

    def start(self, now: float) -> None:
        if self.started_at is None:
            self.started_at = now

    def first_packet(self, now: float) -> None:
        if self.first_packet_at is None and self.started_at is not None:
            self.first_packet_at = now

    @property
    def first_packet_latency(self) -> float | None:
        if self.first_packet_at is None or self.started_at is None:
            return None
        return self.first_packet_at - self.started_at

    @property
    def rtf(self) -> float | None:
        if self.started_at is None or self.finished_at is None or self.audio_seconds <= 0:
            return None
        return (self.finished_at - self.started_at) / self.audio_seconds
