"""Streaming sample-rate conversion between the rates the bridge meets (8 kHz telephony,
16 kHz speech engines, 22.05/24 kHz TTS voices, 48 kHz WebRTC).

Audio arrives in small frames, so resampling each frame on its own would restart the filter
and click at every boundary; ``soxr.ResampleStream`` keeps the filter state between chunks
instead. The stream is created for int16 so soxr does the clipping and rounding in C, and
equal rates short-circuit to a passthrough because most legs never need conversion.

The stream runs in soxr's variable-rate engine even though our ratio is fixed: the default
engine works in large FFT blocks, so fed 20 ms chunks it returns nothing for up to ~120 ms and
then a burst, which a real-time leg cannot use. The variable-rate engine returns a steady
amount per chunk after 10-30 ms of filter delay, still with >110 dB SNR (far beyond int16).
"""

from __future__ import annotations

import numpy as np
import soxr

from bridge.media.frame import AudioFrame


class Resampler:
    """Converts one continuous mono int16 stream from ``in_rate`` to ``out_rate``.

    Output lags input by the filter delay (a few ms), so early calls return fewer samples and
    ``flush`` returns the tail at end of stream. ``process_frame`` stamps its output with a
    timestamp that continues in output samples, anchored to the first input frame.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, "int16", vr=True)
        )
        self._next_timestamp: int | None = None

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(np.asarray(samples, np.int16))

    def flush(self) -> np.ndarray:
        """Drain the filter at end of stream; the resampler is reusable afterwards."""
        if self._stream is None:
            return np.zeros(0, np.int16)
        tail = self._stream.resample_chunk(np.zeros(0, np.int16), last=True)
        self._stream.clear()
        return tail

    def process_frame(self, frame: AudioFrame) -> AudioFrame:
        if frame.sample_rate != self.in_rate:
            raise ValueError(f"frame is {frame.sample_rate} Hz, resampler expects {self.in_rate}")
        if self._stream is None:
            return frame
        if self._next_timestamp is None:
            self._next_timestamp = frame.timestamp * self.out_rate // self.in_rate
        out = AudioFrame(self.process(frame.samples), self.out_rate, self._next_timestamp)
        self._next_timestamp = out.end_timestamp
        return out
