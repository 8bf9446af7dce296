"""Per-stream figures the call can read: first-packet latency, real-time factor, billed usage."""

from __future__ import annotations

from collections.abc import Sequence
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
    failures: int = 0  # attempts that failed and were retried or handed to the fallback

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


def combined(parts: Sequence[StreamMetrics]) -> StreamMetrics:
    """One view of consecutive streams standing for one (a recogniser reopened after a fault):
    the earliest start and first packet, the latest finish, and the sums of the rest."""
    starts = [m.started_at for m in parts if m.started_at is not None]
    firsts = [m.first_packet_at for m in parts if m.first_packet_at is not None]
    ends = [m.finished_at for m in parts if m.finished_at is not None]
    return StreamMetrics(
        started_at=min(starts, default=None),
        first_packet_at=min(firsts, default=None),
        finished_at=max(ends, default=None),
        audio_seconds=sum(m.audio_seconds for m in parts),
        billed_characters=sum(m.billed_characters for m in parts),
        billed_audio_seconds=sum(m.billed_audio_seconds for m in parts),
        tasks=sum(m.tasks for m in parts),
        failures=sum(m.failures for m in parts),
    )


def summary(streams: Sequence[StreamMetrics]) -> dict[str, object]:
    """The call record's figures for a call's streams of one kind (its recognition, or one
    synthesis per bot utterance): per-stream latency and rtf, summed audio and billed usage."""
    latencies = [m.first_packet_latency for m in streams]
    rtfs = [m.rtf for m in streams]
    return {
        "streams": len(streams),
        "first_packet_ms": [round(x * 1000, 1) for x in latencies if x is not None],
        "rtf": [round(x, 3) for x in rtfs if x is not None],
        "audio_seconds": round(sum(m.audio_seconds for m in streams), 3),
        "billed_characters": sum(m.billed_characters for m in streams),
        "billed_audio_seconds": sum(m.billed_audio_seconds for m in streams),
        "tasks": sum(m.tasks for m in streams),
        "failures": sum(m.failures for m in streams),
    }
