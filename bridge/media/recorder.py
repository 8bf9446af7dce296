"""Call records: a folder per call with the transcript, a stereo recording and a summary.

The folder is usable however the call ends: ``call.json`` is written when the call opens and
rewritten on :meth:`CallRecord.close`, transcript lines are flushed one by one, and the WAV header
is patched after every block written, so a crashed process still leaves readable files.

The recording is caller on the left, bot on the right, on one timeline measured from call start.
Audio streams to disk in blocks, so memory stays bounded however long the call lasts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from bridge.media.frame import AudioFrame
from bridge.media.resample import Resampler

_log = logging.getLogger(__name__)

Channel = Literal["caller", "bot"]
_WHO = ("caller", "bot", "system")
_JITTER_S = 0.060  # start times closer than this to the running position are jitter, not gaps
_BLOCK_S = 0.5  # audio goes to disk in blocks this long: one write and header patch per block
_MAX_LAG_S = 2.0  # a channel this far behind the other is taken to be silent


class _Track:
    """One channel's timeline at the record's rate.

    Frames whose start time is within jitter of where the previous one ended simply follow on, so
    timing noise never accumulates; a real gap is padded with silence and audio from before the
    current position (a late duplicate, say) is dropped.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.end = 0  # samples on the timeline, committed or pending (not in the resampler)
        self.pending: list[np.ndarray] = []
        self._resampler = Resampler(rate, rate)
        self._next_at: float | None = None

    def write(self, frame: AudioFrame, at: float) -> None:
        samples = frame.samples
        rate = frame.sample_rate
        if rate != self._resampler.in_rate:
            self.settle()
            self._resampler = Resampler(rate, self.rate)
        next_at = self._next_at
        if next_at is None or abs(at - next_at) > _JITTER_S:
            self.settle()
            behind = self.end - max(round(at * self.rate), 0)
            self.pad(-behind)
            # Drop input that would land before the position, rounded up so none lands early.
            drop = -(-max(behind, 0) * rate // self.rate)
            samples = samples[drop:]
            next_at = at
        if rate != self.rate:  # the usual frame is at the record's rate: no resampler call
            samples = self._resampler.process(samples)
        self.pending.append(samples)  # _append inlined: this runs for every frame of both channels
        self.end = end = self.end + len(samples)
        # After dropped audio the position is ahead of the frame; the next frame is due there.
        next_at += frame.num_samples / rate
        position = end / self.rate
        self._next_at = next_at if next_at > position else position

    def settle(self) -> None:
        """Push audio still inside the resampler onto the timeline, before a jump or the end."""
        self._append(self._resampler.flush())
        self._next_at = None

    def pad(self, samples: int) -> None:
        if samples > 0:
            self._append(np.zeros(samples, np.int16))

    def take(self, count: int) -> np.ndarray:
        audio = np.concatenate(self.pending) if self.pending else np.empty(0, np.int16)
        self.pending = [audio[count:]]
        return audio[:count]

    def _append(self, samples: np.ndarray) -> None:
        self.pending.append(samples)
        self.end += len(samples)


class _StereoWav:
    """A 16-bit stereo WAV file whose header always matches the audio written so far.

    Each block costs one data write and one header rewrite (the ``wave`` module patches the two
    sizes with three seeks and two small writes, each seek a system call)."""

    _HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")

    def __init__(self, path: Path, rate: int) -> None:
        self._file = path.open("wb")
        self._rate = rate
        self._size = 0
        self._file.write(self._header())

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        os.pwrite(self._file.fileno(), self._header(), 0)

    def close(self) -> None:
        self._file.close()

    def _header(self) -> bytes:
        rate, size = self._rate, self._size
        return self._HEADER.pack(
            b"RIFF", 36 + size, b"WAVE", b"fmt ", 16, 1, 2, rate, 4 * rate, 4, 16, b"data", size
        )


class CallRecord:
    """The record of one call; cheap enough to be fed every 20 ms from the media loop."""

    def __init__(
        self,
        path: Path,
        call_id: str,
        sample_rate: int,
        meta: dict[str, object],
        started: datetime,
        now: Callable[[], datetime],
    ) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self._now = now
        self._summary: dict[str, object] = {
            "call_id": call_id,
            **meta,
            "start_utc": started.isoformat(),
            "end_utc": None,
            "end_reason": None,
            "metrics": {},
        }
        self._caller, self._bot = _Track(sample_rate), _Track(sample_rate)
        self._tracks: dict[Channel, _Track] = {"caller": self._caller, "bot": self._bot}
        self._written = 0
        self._max_lag = round(_MAX_LAG_S * sample_rate)
        self._block = _BLOCK_S * sample_rate
        self._transcript: TextIO = (path / "transcript.jsonl").open("a", encoding="utf-8")
        self._wav = _StereoWav(path / "recording.wav", sample_rate)
        self._closed = False
        self._write_summary()

    @classmethod
    def open(
        cls,
        records_dir: Path,
        call_id: str,
        sample_rate: int,
        meta: dict[str, object],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> CallRecord:
        """Create the call's folder, named by start time and call id so listings sort by time."""
        started = now()
        safe_id = re.sub(r"[^\w.@-]", "_", call_id)
        path = records_dir / f"{started:%Y%m%dT%H%M%S}Z-{safe_id}"
        path.mkdir(parents=True)
        return cls(path, call_id, sample_rate, meta, started, now)

    def write_audio(self, channel: Channel, frame: AudioFrame, at: float) -> None:
        """Place ``frame`` on ``channel`` starting ``at`` seconds after call start.

        Frames arriving after :meth:`close` (a race with hang-up) are ignored.
        """
        if self._closed:
            return
        caller, bot = self._caller, self._bot
        (caller if channel == "caller" else bot).write(frame, at)
        lagging, leading = (caller, bot) if caller.end <= bot.end else (bot, caller)
        silent = leading.end - lagging.end - self._max_lag
        if silent > 0:
            lagging.settle()
            lagging.pad(silent)
        if lagging.end - self._written >= self._block:
            self._write_block()

    def add_event(self, event: dict[str, object]) -> None:
        """Append one transcript line, flushed at once so a crash keeps every line so far."""
        if event.get("who") not in _WHO:
            raise ValueError(f"transcript event needs 'who' in {_WHO}: {event!r}")
        if self._closed:
            _log.warning("transcript event after close dropped: %r", event)
            return
        self._transcript.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._transcript.flush()

    def close(self, end_reason: str, metrics: dict[str, object]) -> None:
        """Finish the files; later calls do nothing, so every exit path may call it."""
        if self._seal(end_reason, metrics):
            self._finish()

    async def aclose(self, end_reason: str, metrics: dict[str, object]) -> None:
        """:meth:`close` with the file work in a worker thread, returning once the files are
        complete: calls often end together, and finishing dozens of records in a row on the
        event loop would hold up every other call's media."""
        if self._seal(end_reason, metrics):
            await asyncio.to_thread(self._finish)

    def _seal(self, end_reason: str, metrics: dict[str, object]) -> bool:
        """Stop taking audio and events (from now on the files belong to :meth:`_finish`);
        False if the record was already closed."""
        if self._closed:
            return False
        self._closed = True
        self._summary.update(
            end_utc=self._now().isoformat(), end_reason=end_reason, metrics=metrics
        )
        return True

    def _finish(self) -> None:
        for track in self._tracks.values():
            track.settle()
        end = max(track.end for track in self._tracks.values())
        for track in self._tracks.values():
            track.pad(end - track.end)
        self._write_block()
        self._wav.close()
        self._transcript.close()
        self._write_summary()

    def _write_block(self) -> None:
        caller, bot = self._caller, self._bot
        count = min(caller.end, bot.end) - self._written
        self._wav.write(np.column_stack((caller.take(count), bot.take(count))).tobytes())
        self._written += count

    def _write_summary(self) -> None:
        _write_summary(self.path, self._summary)


def end_orphaned(path: Path, end_reason: str, *, now: datetime | None = None) -> None:
    """Close the record of a call whose process died under it (its media worker was killed).

    Its audio and transcript are on disk already (see the module docstring); what the dead
    process never wrote is the end, so ``call.json`` gets it, and the transcript says why.
    """
    summary = json.loads((path / "call.json").read_text(encoding="utf-8"))
    if summary.get("end_reason"):
        return  # it did end properly
    ended = now or datetime.now(UTC)
    with (path / "transcript.jsonl").open("a", encoding="utf-8") as transcript:
        event = {"who": "system", "text": f"call ended: {end_reason}"}
        transcript.write(json.dumps(event) + "\n")
    summary.update(end_utc=ended.isoformat(), end_reason=end_reason)
    _write_summary(path, summary)


def _write_summary(path: Path, summary: dict[str, object]) -> None:
    """Replace ``call.json`` atomically so a reader never sees half of it."""
    tmp = path / "call.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path / "call.json")
