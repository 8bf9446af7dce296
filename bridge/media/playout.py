"""The bot's outbound audio stage: a steady 20 ms clock and an utterance queue that can be cut.

Two pieces, both driven from outside so tests can run them on a fake clock:

* :class:`PlayoutClock` says when each frame is due. Deadlines sit on a fixed grid
  (``start + n * ptime``) so sleep overshoot never accumulates into drift, and a loop that falls
  far behind skips ticks instead of bursting a backlog of stale audio at the caller.
* :class:`Playout` turns queued synthesised speech into exactly one frame per tick and keeps
  track of how far each utterance got, so after a barge-in the dialog remembers only what the
  caller actually heard.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from bridge.media.frame import AudioFrame, silence
from bridge.speech.base import SpeechChunk


class PlayoutClock:
    """Frame deadlines on a fixed grid, with a sans-I/O core and a small async helper.

    :meth:`time_to_next` and :meth:`tick` take the current time as an argument; :meth:`wait_next`
    wires them to ``time_fn`` and ``sleep_fn`` (``time.monotonic`` and ``asyncio.sleep`` unless a
    test injects a fake clock).
    """

    def __init__(
        self,
        ptime: float = 0.020,
        *,
        max_lag: float = 0.100,
        lateness_window: int = 15_000,
        time_fn: Callable[[], float] = time.monotonic,
        sleep_fn: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.ptime = ptime
        self.max_lag = max_lag
        self.skipped = 0
        """Ticks dropped by resyncs after stalls longer than ``max_lag``."""
        self.lateness: deque[float] = deque(maxlen=lateness_window)
        """Seconds each recent tick fired after its deadline (negative if early)."""
        self._time_fn = time_fn
        self._sleep_fn = sleep_fn
        self._start: float | None = None
        self._next = 0

    def deadline(self, index: int) -> float:
        """When tick ``index`` is due; computed from the anchor, never from the previous tick."""
        if self._start is None:
            raise RuntimeError("the clock starts on its first time_to_next() or tick()")
        return self._start + index * self.ptime

    def time_to_next(self, now: float) -> float:
        """Seconds until the next tick is due (0 when overdue).

        Within ``max_lag`` overdue ticks fire back to back so the average rate is kept; beyond it
        the backlog is abandoned (counted in ``skipped``) and the most recent grid point becomes
        the next tick, because late audio is worse than missing audio on a live call.
        """
        if self._start is None:
            self._start = now
        behind = now - self.deadline(self._next)
        if behind > self.max_lag:
            current = int(behind // self.ptime) + self._next
            self.skipped += current - self._next
            self._next = current
        return max(self.deadline(self._next) - now, 0.0)

    def restart(self, now: float) -> None:
        """Anchor a fresh grid at ``now``, its first tick due at once: for a talkspurt after
        silence, whose first frame would otherwise wait up to a frame for the old grid."""
        self._start, self._next = now, 0

    def tick(self, now: float) -> int:
        """Consume the next tick at time ``now``; returns its index on the grid."""
        if self._start is None:
            self._start = now
        index = self._next
        self.lateness.append(now - self.deadline(index))
        self._next += 1
        return index

    async def wait_next(self) -> int:
        """Sleep until the next tick is due and return its index.

        Always awaits ``sleep_fn`` (with 0 when overdue) so a catching-up loop still yields.
        """
        await self._sleep_fn(self.time_to_next(self._time_fn()))
        return self.tick(self._time_fn())


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    """The first audio of an utterance went out in frame number ``at_frame``."""

    id: str
    at_frame: int


@dataclass(frozen=True, slots=True)
class UtteranceFinished:
    """An utterance left the queue: played to the end, or cut (``reason`` says why)."""

    id: str
    said: str
    heard: str
    interrupted: bool
    played_ms: int
    reason: str = ""


PlayoutEvent = UtteranceStarted | UtteranceFinished


@dataclass(slots=True)
class _Segment:
    """The audio voicing one piece of text, at sample offsets within its utterance."""

    text: str
    start: int
    length: int = 0
    marks: list[tuple[int, str]] = field(default_factory=list)  # (end offset, word)

    def heard(self, played: int, sealed: bool) -> list[str]:
        """Words of this segment fully heard after ``played`` samples of the utterance.

        Without word marks, the share of audio played is mapped to whole words, rounding down;
        while more audio may still arrive (not ``sealed``) the last word is never claimed, since
        its true length is unknown.
        """
        progress = played - self.start
        if sealed and progress >= self.length:
            return [self.text]
        if self.marks:
            return [word for end, word in self.marks if end <= played]
        if not self.length:
            return []
        tokens = self.text.split()
        limit = len(tokens) if sealed else max(len(tokens) - 1, 0)
        return tokens[: min(len(tokens) * progress // self.length, limit)]


@dataclass(eq=False, slots=True)
class _Utterance:
    id: str
    barge_in: bool
    segments: list[_Segment] = field(default_factory=list)
    audio: deque[np.ndarray] = field(default_factory=deque)
    head: int = 0  # samples of audio[0] already played
    received: int = 0
    played: int = 0
    ended: bool = False
    started: bool = False

    def add(self, chunk: SpeechChunk) -> None:
        if chunk.text or not self.segments:
            self.segments.append(_Segment(chunk.text, self.received))
        segment = self.segments[-1]
        rate = chunk.audio.sample_rate
        segment.marks.extend(
            (self.received - (-mark.end_ms * rate // 1000), mark.word) for mark in chunk.words
        )
        segment.length += chunk.audio.num_samples
        self.received += chunk.audio.num_samples
        if chunk.audio.num_samples:
            self.audio.append(chunk.audio.samples)

    def read_into(self, out: np.ndarray) -> int:
        """Copy queued audio into ``out``; returns how many samples were available."""
        filled = 0
        while self.audio and filled < len(out):
            take = min(len(self.audio[0]) - self.head, len(out) - filled)
            out[filled : filled + take] = self._consume(take)
            filled += take
        return filled

    def read_whole(self, count: int) -> np.ndarray | None:
        """The next ``count`` samples when one queued block holds them all (a view: no copy),
        else None and nothing is read."""
        if not self.audio or len(self.audio[0]) - self.head < count:
            return None
        return self._consume(count)

    def _consume(self, count: int) -> np.ndarray:
        """Play ``count`` samples from the first queued block (it holds that many)."""
        block, head = self.audio[0], self.head
        self.head += count
        if self.head == len(block):
            self.audio.popleft()
            self.head = 0
        self.played += count
        return block[head : head + count]

    @property
    def done(self) -> bool:
        return self.ended and self.played == self.received

    def said(self) -> str:
        return _join(segment.text for segment in self.segments)

    def heard(self) -> str:
        words: list[str] = []
        for i, segment in enumerate(self.segments):
            if self.played <= segment.start and segment.length:
                break
            words += segment.heard(self.played, self.ended or i < len(self.segments) - 1)
        return _join(words)


def _join(parts: Iterable[str]) -> str:
    """Join text pieces with single spaces, whatever spacing the TTS left around them."""
    return " ".join(" ".join(parts).split())


class Playout:
    """A queue of bot utterances played out one frame at a time.

    Utterances play in the order they were begun; one whose audio has not caught up yet (TTS
    slower than real time) holds the queue with silence rather than letting a later one jump in.

    Queue bound: a chunk is accepted whenever less than ``max_queued_ms`` of audio is waiting, so
    the queue may overshoot by at most one chunk; pushing into a full queue raises
    :class:`OverflowError`. Producers await :meth:`wait_for_space` before each push, which never
    blocks the loop and never loses bot audio.
    """

    def __init__(self, sample_rate: int, frame_ms: int = 20, max_queued_ms: int = 5_000) -> None:
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.max_queued_ms = max_queued_ms
        self.frames_sent = 0
        self._queue: deque[_Utterance] = deque()
        self._by_id: dict[str, _Utterance] = {}
        self._cut: set[str] = set()
        self._queued = 0
        self._events: list[PlayoutEvent] = []
        self._space = asyncio.Event()
        self._space.set()
        self._audio = asyncio.Event()

    @property
    def queued_ms(self) -> int:
        return self._queued * 1000 // self.sample_rate

    @property
    def free_ms(self) -> int:
        return max(self.max_queued_ms - self.queued_ms, 0)

    @property
    def speaking(self) -> bool:
        """Bot speech is under way (possibly paused waiting for TTS): barge-in applies."""
        return bool(self._queue) and self._queue[0].started

    @property
    def starting(self) -> bool:
        """The next frame starts an utterance whose audio is queued: a talkspurt begins."""
        return bool(self._queue) and not self._queue[0].started and bool(self._queue[0].audio)

    async def wait_for_start(self) -> None:
        """Return once the next frame starts an utterance (so a transport idling between
        ticks can send it at once)."""
        while not self.starting:
            self._audio.clear()
            await self._audio.wait()

    @property
    def interruptible(self) -> bool:
        """The utterance being spoken lets the caller cut it off."""
        return self.speaking and self._queue[0].barge_in

    async def wait_for_space(self) -> None:
        """Return once the queue accepts another chunk."""
        while not self.free_ms:
            self._space.clear()
            await self._space.wait()

    def begin_utterance(self, utterance_id: str, barge_in: bool = True) -> None:
        if utterance_id in self._by_id or utterance_id in self._cut:
            raise ValueError(f"utterance {utterance_id!r} already exists")
        utterance = _Utterance(utterance_id, barge_in)
        self._queue.append(utterance)
        self._by_id[utterance_id] = utterance

    def push(self, utterance_id: str, chunk: SpeechChunk) -> None:
        """Queue a chunk of audio already at the playout rate.

        Chunks for an utterance cut by :meth:`flush` are ignored: their producer is being
        cancelled, and the cut was already reported.
        """
        if utterance_id in self._cut:
            return
        rate = chunk.audio.sample_rate
        if rate != self.sample_rate:
            raise ValueError(f"chunk at {rate} Hz, playout runs at {self.sample_rate}")
        if not self.free_ms:
            raise OverflowError("playout queue is full: await wait_for_space() before push()")
        self._utterance(utterance_id).add(chunk)
        self._queued += chunk.audio.num_samples
        self._audio.set()

    def end_utterance(self, utterance_id: str) -> None:
        """No more audio will come; the utterance finishes once what was queued has played."""
        if utterance_id not in self._cut:
            self._utterance(utterance_id).ended = True

    def next_frame(self) -> AudioFrame:
        """Exactly one frame: queued speech, padded with silence when there is not enough."""
        index = self.frames_sent
        self.frames_sent += 1
        timestamp = index * self.frame_samples
        if not self._queue:  # nothing to say, as for most of a call: no audio to assemble
            self._space.set()
            return AudioFrame(silence(self.frame_samples), self.sample_rate, timestamp)
        utterance = self._queue[0]
        # Mid-utterance the frame usually lies within one TTS chunk: send that slice as is.
        whole = utterance.read_whole(self.frame_samples) if utterance.started else None
        if whole is not None:
            self._queued -= self.frame_samples
            if utterance.done:
                self._finish(self._queue.popleft(), "")
            frame = AudioFrame(whole, self.sample_rate, timestamp)
        else:
            frame = AudioFrame(self._assemble(index), self.sample_rate, timestamp)
        if self.free_ms:
            self._space.set()
        return frame

    def _assemble(self, index: int) -> np.ndarray:
        """Frame ``index`` from the queued utterances in turn, padded with silence."""
        out = np.zeros(self.frame_samples, np.int16)
        filled = 0
        while filled < self.frame_samples and self._queue:
            utterance = self._queue[0]
            if not utterance.started and (utterance.audio or utterance.ended):
                utterance.started = True
                self._events.append(UtteranceStarted(utterance.id, index))
            got = utterance.read_into(out[filled:])
            filled += got
            self._queued -= got
            if not utterance.done:
                break  # TTS is behind: hold this utterance's place with silence
            self._finish(self._queue.popleft(), "")
        return out

    def flush(self, reason: str) -> list[UtteranceFinished]:
        """Drop every queued utterance at once (barge-in, hang-up) and report what was heard.

        The reports are also queued as events, so the event stream alone tells the whole story.
        """
        cut = [self._finish(utterance, reason) for utterance in self._queue]
        self._cut.update(utterance.id for utterance in self._queue)
        self._queue.clear()
        self._queued = 0
        self._space.set()
        return cut

    def pop_events(self) -> list[PlayoutEvent]:
        events, self._events = self._events, []
        return events

    def _utterance(self, utterance_id: str) -> _Utterance:
        try:
            return self._by_id[utterance_id]
        except KeyError:
            raise KeyError(f"no queued utterance {utterance_id!r}") from None

    def _finish(self, utterance: _Utterance, reason: str) -> UtteranceFinished:
        del self._by_id[utterance.id]
        finished = UtteranceFinished(
            utterance.id,
            said=utterance.said(),
            heard=utterance.heard(),
            interrupted=not utterance.done,
            played_ms=utterance.played * 1000 // self.sample_rate,
            reason=reason,
        )
        self._events.append(finished)
        return finished
