"""Adaptive jitter buffer with packet-loss concealment for the RTP leg.

Design, and why:

* Sans-I/O. ``push`` takes a packet and its arrival time, ``pop`` is called once per frame by
  whoever owns the playout clock and gets a frame back. Times are plain floats passed in, so
  scenarios (spikes, loss, wrap) are deterministic in tests and the SIP leg owns the clock.
* Everything works on unwrapped (64-bit, monotonic) sequence numbers and timestamps, and the
  buffer is a map of sample ranges rather than a ring of packets: a frame is assembled from
  whatever packets overlap it, so 10/20/30 ms packets all fit any frame size, and partly late
  packets still contribute their remaining samples. The RTP clock is assumed to equal the
  decoded sample rate (true for G.711, the codecs we negotiate).
* Delay is measured as *slack*: how long before its playout a packet with the lowest recently
  seen network transit would arrive. Each packet's extra transit over that minimum is its
  delay variation; the target slack is a peak-hold of it that jumps up at once and decays
  with a half-life of seconds, clamped to [min_delay_ms, max_delay_ms]. Slack is independent
  of which packet happens to have arrived last, so it does not oscillate with the jitter
  itself, and a packet is on time exactly when its variation is below the slack.
* Growing is fast: when the buffer runs dry the cursor holds (a stall or spike pushes depth up
  by exactly its length instead of discarding the delayed audio as late), and when slack is
  under target a concealed frame is inserted. Shrinking is slow and gentle: drop a whole
  frame if the audio is quiet, otherwise cut one pitch period with a crossfade (time
  compression). Adjustments of either kind are spaced a few frames apart so concealment
  always starts from clean history and never builds on its own output.
* Concealment repeats the last pitch period (found by normalised autocorrelation, with the
  loop seam crossfaded) rather than inserting silence, holds full level for one frame, fades
  to silence over the next two, and crossfades back into real audio, so there are no clicks
  at either edge and long gaps end up silent.
* A new SSRC, or a sequence/timing jump confirmed by two consecutive packets (RFC 3550's
  probation idea), restarts the stream state; output timestamps keep counting regardless.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np

from bridge.media.frame import AudioFrame
from bridge.media.rtp import RtpPacket, seq_diff, ts_diff

_PITCH_MIN_S = 0.005
_PITCH_MAX_S = 0.015
_HOLD_S = 0.020  # concealment plays at full level this long...
_FADE_S = 0.040  # ...then fades linearly to silence over this long
_CROSSFADE_S = 0.005
_PEAK_HALF_LIFE_S = 3.0
_BASE_WINDOW = 256  # packets over which the minimum transit is taken
_ADJUST_EVERY = 5  # frames between two delay adjustments, so concealment history stays clean
_QUIET_RMS = 300.0  # about -40 dBFS: dropping a whole frame this quiet is inaudible
_MAX_DROPOUT = 3000  # RFC 3550 A.1 sequence jump limits
_MAX_MISORDER = 100
_MAX_TIMING_JUMP_S = 1.0  # timestamp vs arrival disagreement that means a new timeline
_SEEN_LIMIT = 2048
_RECENT_BLOCKS = 8  # played blocks the concealer keeps before trimming its history
_INT16 = np.dtype(np.int16)  # compared by identity: the usual frame is already int16


@dataclass(slots=True)
class JitterStats:
    """Counters since creation. ``received`` counts every pushed packet; ``lost`` counts
    packets skipped because they had not arrived when due; ``late`` counts packets dropped
    because their time had passed, including strays of a replaced stream or timeline;
    ``concealed_ms`` is all synthesised output, including fill while re-buffering;
    ``depth_ms`` is the audio buffered ahead of the cursor and ``target_ms`` the slack aimed
    for; ``jitter_ms`` is the RFC 3550 interarrival jitter estimate."""

    received: int = 0
    played: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    concealed_ms: float = 0.0
    depth_ms: float = 0.0
    target_ms: float = 0.0
    jitter_ms: float = 0.0
    ssrc_changes: int = 0
    resyncs: int = 0


@dataclass(slots=True)
class _Slot:
    seq: int
    ts: int
    samples: np.ndarray
    end: int  # ts + samples.size, read for every slot on every frame


class _WindowMin:
    """Minimum of the last ``size`` values in O(1) amortised (a monotonic queue): the base
    transit is read for every packet and every frame, so rescanning the window would cost."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._count = 0
        self._candidates: deque[tuple[int, float]] = deque()  # increasing values, oldest first
        self.min = 0.0
        """The minimum, once a value was appended (an attribute: it is read for every frame)."""

    def append(self, value: float) -> None:
        candidates = self._candidates
        while candidates and candidates[-1][1] >= value:
            candidates.pop()
        count = self._count
        candidates.append((count, value))
        self._count = count + 1
        if candidates[0][0] < count - self._size:
            candidates.popleft()
        self.min = candidates[0][1]


def _best_lag(x: np.ndarray, min_lag: int, max_lag: int, window: int) -> int:
    """The lag at which the last ``window`` samples of ``x`` best match ``x`` delayed by it
    (normalised cross-correlation); needs ``len(x) >= window + max_lag``.

    Correlations and window energies are two ``correlate`` calls in C: building the windows
    as a strided matrix cost three times as much, and this runs at every loss and every cut.
    """
    ref = x[-window:]
    earlier = x[-(window + max_lag) : x.size - min_lag]  # every candidate window, oldest first
    dots = np.correlate(earlier, ref)
    energy = np.correlate(earlier * earlier, _ones(window)) + 1e-9
    return max_lag - int(np.argmax(dots / np.sqrt(energy)))


@functools.cache
def _ones(n: int) -> np.ndarray:
    return np.ones(n)


def _ramp(n: int) -> np.ndarray:
    """Crossfade weights strictly between 0 and 1, so neither edge sample is duplicated."""
    return np.arange(1, n + 1) / (n + 1)


class _Concealer:
    """Pitch-repeating packet-loss concealment over the history of what was played."""

    def __init__(self, sample_rate: int) -> None:
        self.min_lag = int(sample_rate * _PITCH_MIN_S)
        self.max_lag = int(sample_rate * _PITCH_MAX_S)
        self._hold = int(sample_rate * _HOLD_S)
        self._fade = int(sample_rate * _FADE_S)
        self._crossfade = int(sample_rate * _CROSSFADE_S)
        self._history_size = 2 * self.max_lag
        # What was played, most recent last, joined into a history only when a loss needs it:
        # frames are played far more often than they are concealed.
        self._recent: deque[np.ndarray] = deque([np.zeros(self._history_size)])
        self._recent_size = self._history_size
        self._period: np.ndarray | None = None
        self._position = 0
        self._elapsed = 0

    @property
    def active(self) -> bool:
        return self._period is not None

    def observe(self, played: np.ndarray) -> None:
        recent = self._recent
        recent.append(played)
        self._recent_size += played.size
        if len(recent) > _RECENT_BLOCKS:  # trimmed now and then: this runs for every frame
            while self._recent_size - recent[0].size >= self._history_size:
                self._recent_size -= recent.popleft().size

    @property
    def _history(self) -> np.ndarray:
        return np.concatenate(self._recent, dtype=np.float64)[-self._history_size :]

    def conceal(self, n: int) -> np.ndarray:
        if self._period is None:
            self._period = self._extract_period()
            self._position = self._elapsed = 0
        position, elapsed = self._position, self._elapsed
        out = self._period.take(np.arange(position, position + n), mode="wrap")
        if elapsed + n > self._hold:  # fading (or faded) from here on
            t = np.arange(elapsed, elapsed + n)
            out *= (1.0 - (t - self._hold) / self._fade).clip(0.0, 1.0)
        self._position = (position + n) % self._period.size
        self._elapsed = elapsed + n
        return out

    def recover(self, real: np.ndarray) -> np.ndarray:
        """Crossfade from the running concealment into ``real`` and end the loss burst."""
        out = real.astype(np.float64)
        n = min(out.size, self._crossfade)
        w = _ramp(n)
        out[:n] = w * out[:n] + (1.0 - w) * self.conceal(n)
        self._period = None
        return out

    def pitch_lag(self, x: np.ndarray) -> int:
        """Best repetition lag in the last ``2 * max_lag`` samples of ``x``."""
        return _best_lag(x.astype(np.float64), self.min_lag, self.max_lag, self.max_lag)

    def _extract_period(self) -> np.ndarray:
        h = self._history
        lag = self.pitch_lag(h)
        period = h[-lag:].copy()
        # Blend the period's tail into the samples that precede its head, so looping it is
        # seamless even when the true pitch is not a whole number of samples.
        seam = lag // 4
        w = _ramp(seam)
        period[lag - seam :] = (1.0 - w) * h[h.size - seam :] + w * h[h.size - lag - seam : -lag]
        return period


class JitterBuffer:
    """Reorders, de-duplicates and paces one RTP audio stream into fixed-size frames.

    ``decode`` turns a packet into int16 samples at ``sample_rate``; telephone-events and
    other payload types must be filtered out by the caller.
    """

    def __init__(
        self,
        sample_rate: int,
        frame_samples: int,
        decode: Callable[[RtpPacket], np.ndarray],
        *,
        min_delay_ms: float = 20,
        max_delay_ms: float = 200,
        initial_delay_ms: float = 60,
    ) -> None:
        if not 0 <= min_delay_ms <= initial_delay_ms <= max_delay_ms:
            raise ValueError("need 0 <= min_delay_ms <= initial_delay_ms <= max_delay_ms")
        self._rate = sample_rate
        self._frame = frame_samples
        self._decode = decode
        self._min_delay = min_delay_ms / 1000
        self._max_delay = max_delay_ms / 1000
        self._concealer = _Concealer(sample_rate)
        self._min_cut = min(self._concealer.min_lag, frame_samples)  # shortest cut worth making
        # What a cut analyses: the frame plus room for a whole frame or two pitch periods.
        self._lookahead = frame_samples + max(frame_samples, 2 * self._concealer.max_lag)
        self._stats = JitterStats()
        self._concealed = 0
        self._started = False
        self._out_ts = 0
        self._since_adjust = 0
        self._uncut_lag = 0  # the last pitch period found too long to cut
        self._ssrc: int | None = None
        self._previous_ssrc: int | None = None
        self._peak = initial_delay_ms / 1000
        self._peak_at: float | None = None
        self._jitter = 0.0
        self._reset_stream(None)

    def _reset_stream(self, ssrc: int | None) -> None:
        self._ssrc = ssrc
        self._slots: dict[int, _Slot] = {}
        self._seen: set[int] = set()
        # The packet with the highest sequence number: unwrapped seq and ts, raw seq and ts,
        # arrival. Later packets are unwrapped against it and checked for a new timeline.
        self._highest: tuple[int, int, int, int, float] | None = None
        # The furthest sample any slot of this stream reached: slots are only removed once
        # played past, so audio lies ahead of the cursor exactly when this is beyond it.
        self._max_end: int | None = None
        self._probation: tuple[RtpPacket, float] | None = None
        self._base_transit = _WindowMin(_BASE_WINDOW)
        self._last_transit: float | None = None
        self._play_ts: int | None = None
        self._waiting = True
        self._last_played: int | None = None

    @property
    def stats(self) -> JitterStats:
        depth = 0
        if self._slots:
            start = min(slot.ts for slot in self._slots.values())
            if self._play_ts is not None:
                start = self._play_ts
            depth = max(0, max(slot.end for slot in self._slots.values()) - start)
        return replace(
            self._stats,
            concealed_ms=self._concealed * 1000 / self._rate,
            depth_ms=depth * 1000 / self._rate,
            target_ms=self._target() * 1000,
            jitter_ms=self._jitter * 1000,
        )

    # -- receiving ---------------------------------------------------------------------------

    def push(self, packet: RtpPacket, arrival: float) -> None:
        self._stats.received += 1
        if packet.ssrc != self._ssrc:
            if packet.ssrc == self._previous_ssrc:
                self._stats.late += 1  # straggler from the stream we already switched away from
                return
            if self._ssrc is not None:
                self._stats.ssrc_changes += 1
                self._previous_ssrc = self._ssrc
            self._reset_stream(packet.ssrc)
        seq, ts = self._unwrap(packet)
        if self._is_discontinuous(seq, ts, arrival):
            held, self._probation = self._probation, (packet, arrival)
            if held is None or packet.sequence_number != (held[0].sequence_number + 1) & 0xFFFF:
                self._stats.late += held is not None  # a held stray is replaced unused
                return
            self._stats.resyncs += 1
            self._reset_stream(packet.ssrc)
            held_packet, held_arrival = held
            self._accept(held_packet, held_arrival, *self._unwrap(held_packet))
            seq, ts = self._unwrap(packet)
        elif self._probation is not None:
            self._stats.late += 1  # the held packet was a stray, not a new timeline
            self._probation = None
        self._accept(packet, arrival, seq, ts)

    def _unwrap(self, packet: RtpPacket) -> tuple[int, int]:
        """Sequence number and timestamp as unbounded ints, placed nearest the highest packet
        (so reordering by up to half the counter range is tolerated); a stream's first packet
        keeps its own."""
        highest = self._highest
        if highest is None:
            return packet.sequence_number, packet.timestamp
        seq, ts, raw_seq, raw_ts, _ = highest
        return seq + seq_diff(packet.sequence_number, raw_seq), ts + ts_diff(
            packet.timestamp, raw_ts
        )

    def _is_discontinuous(self, seq: int, ts: int, arrival: float) -> bool:
        highest = self._highest
        if highest is None:
            return False
        top_seq, top_ts, _, _, at = highest
        jump = seq - top_seq
        timing = (ts - top_ts) / self._rate - (arrival - at)
        return not -_MAX_MISORDER <= jump <= _MAX_DROPOUT or abs(timing) > _MAX_TIMING_JUMP_S

    def _accept(self, packet: RtpPacket, arrival: float, seq: int, ts: int) -> None:
        seen = self._seen
        if seq in seen:
            self._stats.duplicates += 1
            return
        seen.add(seq)
        if len(seen) > _SEEN_LIMIT:
            self._seen = {s for s in seen if s > seq - _SEEN_LIMIT // 2}
        highest = self._highest
        if highest is None or seq > highest[0]:
            self._highest = (seq, ts, packet.sequence_number, packet.timestamp, arrival)
        self._observe_timing(ts, arrival)
        samples = self._decode(packet)
        if samples.dtype is not _INT16:
            samples = np.asarray(samples, np.int16)
        end = ts + samples.size
        if self._play_ts is not None and end <= self._play_ts:
            self._stats.late += 1
            return
        self._slots[seq] = _Slot(seq, ts, samples, end)
        if self._max_end is None or end > self._max_end:
            self._max_end = end

    def _observe_timing(self, ts: int, arrival: float) -> None:
        transit = arrival - ts / self._rate
        last = self._last_transit
        if last is not None:
            self._jitter += (abs(transit - last) - self._jitter) / 16
        self._last_transit = transit
        base = self._base_transit
        base.append(transit)
        variation = transit - base.min
        peak = self._peak
        if self._peak_at is not None:
            peak *= 0.5 ** ((arrival - self._peak_at) / _PEAK_HALF_LIFE_S)
        self._peak = variation if variation > peak else peak
        self._peak_at = arrival

    # -- playing -----------------------------------------------------------------------------

    def _target(self) -> float:
        peak = self._peak
        return self._min_delay if peak < self._min_delay else min(peak, self._max_delay)

    def _slack(self, ts: int, now: float) -> float:
        return now - self._base_transit.min - ts / self._rate

    def pop(self, now: float) -> AudioFrame | None:
        n = self._frame
        if self._waiting and not self._resume(now):
            return self._emit(self._fill(n)) if self._started else None
        play_ts = self._play_ts
        assert play_ts is not None
        slack = self._slack(play_ts, now)
        target = self._target()
        if self._max_end is None or self._max_end <= play_ts:
            self._waiting = True  # ran dry: hold the cursor so delayed audio is not lost
            out = self._fill(n)
        elif slack < target and self._since_adjust >= _ADJUST_EVERY:
            self._since_adjust = 0
            out = self._fill(n)
        else:
            out = self._play(n, int((slack - target) * self._rate) - n)
        return self._emit(out)

    def _resume(self, now: float) -> bool:
        if not self._slots:
            return False
        start = min(slot.ts for slot in self._slots.values())
        if self._play_ts is not None:
            start = max(start, self._play_ts)
        if self._slack(start, now) < self._target():
            return False
        self._play_ts = start
        self._waiting = False
        self._started = True
        return True

    def _fill(self, n: int) -> np.ndarray:
        """``n`` samples of concealment, recorded as played."""
        out = self._concealer.conceal(n)
        self._concealed += n
        self._concealer.observe(out)
        return out

    def _play(self, n: int, excess: int) -> np.ndarray:
        """Render the next frame from the cursor, compressing out up to ``excess`` samples."""
        assert self._play_ts is not None
        self._since_adjust += 1
        # Every cut is at least a pitch period long (or a whole frame), so smaller excesses wait;
        # after a period too long to cut, so do excesses shorter than it: pitch is steady, and
        # analysing it again every few frames in vain was the costliest part of a quiet call.
        fits = excess >= self._min_cut and excess >= self._uncut_lag
        # A cut needs the whole lookahead buffered: no slot reaching its end means no cut yet.
        buffered = self._max_end is not None and self._max_end >= self._play_ts + self._lookahead
        if fits and buffered and self._since_adjust >= _ADJUST_EVERY and not self._concealer.active:
            x, mask = self._read(self._lookahead)
            cut = self._shrink_cut(x, n, excess) if mask.all() else 0
            if cut:
                self._since_adjust = 0
                out = _compress(x[: n + cut], cut)
                self._concealer.observe(out)
                self._advance(n + cut)
                return out
        whole = None if self._concealer.active else self._whole(n)
        if whole is None:
            out = self._render(*self._read(n))
        else:
            out = whole
            self._concealer.observe(out)
        self._advance(n)
        return out

    def _whole(self, n: int) -> np.ndarray | None:
        """The next ``n`` samples when the packet under the cursor and the next one in sequence
        hold them all (the usual frame, even after a cut left the cursor mid-packet), else None.
        """
        start = self._play_ts
        assert start is not None
        slots = self._slots
        # Usually the packet after the last one played; any other order takes the search.
        guess = slots.get(self._last_played + 1) if self._last_played is not None else None
        candidates = (guess,) if guess is not None and guess.ts <= start < guess.end else None
        for slot in candidates or slots.values():
            if slot.ts <= start < slot.end:
                head = slot.samples[start - slot.ts : start - slot.ts + n]
                if head.size == n:
                    return head
                after = self._slots.get(slot.seq + 1)
                if after is None or after.ts != slot.end or after.end < start + n:
                    return None
                return np.concatenate((head, after.samples[: n - head.size]))
        return None

    def _shrink_cut(self, x: np.ndarray, n: int, excess: int) -> int:
        if n <= excess and AudioFrame(x[: 2 * n], self._rate).rms() < _QUIET_RMS:
            return n
        lag = self._concealer.pitch_lag(x[: 2 * self._concealer.max_lag])  # where the cut goes
        self._uncut_lag = 0 if lag <= excess else lag
        return lag if lag <= excess else 0

    def _read(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples and a have-it mask for ``n`` samples from the cursor."""
        assert self._play_ts is not None
        start = self._play_ts
        samples = np.zeros(n, np.int16)
        mask = np.zeros(n, bool)
        for slot in self._slots.values():
            lo, hi = max(slot.ts, start), min(slot.end, start + n)
            if lo < hi:
                samples[lo - start : hi - start] = slot.samples[lo - slot.ts : hi - slot.ts]
                mask[lo - start : hi - start] = True
        return samples, mask

    def _render(self, samples: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Real samples where ``mask`` is set, concealment elsewhere, crossfaded at edges."""
        if not self._concealer.active and mask.all():
            self._concealer.observe(samples)
            return samples  # the usual frame: all real, already int16
        out = np.empty(samples.size)
        edges = [0, *(np.flatnonzero(np.diff(mask)) + 1), samples.size]
        for lo, hi in pairwise(edges):
            if not mask[lo]:
                out[lo:hi] = self._fill(hi - lo)
                continue
            if self._concealer.active:
                chunk = self._concealer.recover(samples[lo:hi])
            else:
                chunk = samples[lo:hi].astype(np.float64)
            self._concealer.observe(chunk)
            out[lo:hi] = chunk
        return out

    def _advance(self, n: int) -> None:
        assert self._play_ts is not None
        self._play_ts = play_ts = self._play_ts + n
        done = [seq for seq, slot in self._slots.items() if slot.end <= play_ts]
        if len(done) > 1:
            done.sort()
        stats = self._stats
        for seq in done:
            del self._slots[seq]
            last = self._last_played
            if last is None or seq > last:
                if last is not None:
                    stats.lost += seq - last - 1
                self._last_played = seq
            stats.played += 1

    def _emit(self, out: np.ndarray) -> AudioFrame:
        if out.dtype is not _INT16:
            out = out.round().clip(-32768, 32767).astype(np.int16)  # methods: half np.clip's cost
        frame = AudioFrame(out, self._rate, self._out_ts)
        self._out_ts = frame.end_timestamp
        return frame


def _compress(x: np.ndarray, cut: int) -> np.ndarray:
    """Shorten ``x`` by ``cut`` samples, crossfading its head into the audio ``cut`` later, so
    both ends stay continuous with their neighbours (a pitch-synchronous cut is inaudible)."""
    n = x.size - cut
    fade = min(cut, n)
    w = _ramp(fade)
    head = (1.0 - w) * x[:fade] + w * x[cut : cut + fade]
    return np.concatenate([head, x[cut + fade :]]).astype(np.float64)
