"""The audio unit that flows between every stage of a call: mono int16 PCM with a clock."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

_INT16 = np.dtype(np.int16)  # compared with every frame's: a dtype, not the type to convert


@functools.cache
def silence(num_samples: int) -> np.ndarray:
    """``num_samples`` zeros, one shared read-only array per length: silent frames are most of
    a call's frames, and sharing them spares an allocation and lets encoders cache them."""
    samples = np.zeros(num_samples, np.int16)
    samples.flags.writeable = False
    return samples


@dataclass(slots=True, init=False)
class AudioFrame:
    """A block of mono signed 16-bit PCM; a value: treat it as immutable.

    ``timestamp`` counts samples at ``sample_rate`` from the start of the stream the frame
    belongs to (like an RTP timestamp, but never wrapping), so stages can line frames up in
    time without wall clocks. Every stage of every call makes or reads a frame every 20 ms, so
    ``num_samples`` and ``end_timestamp`` are plain attributes set once, the class is not
    frozen (a frozen dataclass's initialiser costs three times as much), and the initialiser is
    written out: one function where the generated one and ``__post_init__`` took two.
    """

    samples: np.ndarray
    sample_rate: int
    timestamp: int = 0
    num_samples: int = field(init=False, repr=False, compare=False)
    end_timestamp: int = field(init=False, repr=False, compare=False)

    def __init__(self, samples: np.ndarray, sample_rate: int, timestamp: int = 0) -> None:
        if samples.dtype != _INT16 or samples.ndim != 1:
            raise ValueError("AudioFrame samples must be a 1-D int16 array")
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.samples = samples
        self.sample_rate = sample_rate
        self.timestamp = timestamp
        self.num_samples = n = len(samples)
        self.end_timestamp = timestamp + n

    @classmethod
    def silence(cls, sample_rate: int, duration_ms: int, timestamp: int = 0) -> AudioFrame:
        return cls(np.zeros(sample_rate * duration_ms // 1000, np.int16), sample_rate, timestamp)

    @classmethod
    def from_bytes(cls, data: bytes, sample_rate: int, timestamp: int = 0) -> AudioFrame:
        return cls(np.frombuffer(data, np.int16).copy(), sample_rate, timestamp)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate

    def to_bytes(self) -> bytes:
        return self.samples.tobytes()

    def rms(self) -> float:
        """Root mean square level in int16 units (0 for an empty frame)."""
        if not self.num_samples:
            return 0.0
        x = self.samples.astype(np.float64)
        return math.sqrt(x.dot(x) / x.size)  # a dot product: a fifth of np.mean's cost
