"""Audio conversions the emulator needs between its engines and the rates clients ask for."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import soxr


def convert(samples: np.ndarray, from_rate: int, to_rate: int, gain: float = 1.0) -> np.ndarray:
    """Resample int16 mono and apply a gain, clipping to int16."""
    if samples.size == 0:
        return samples.astype(np.int16)
    out = samples.astype(np.float32)
    if from_rate != to_rate:
        out = soxr.resample(out, from_rate, to_rate)
    if gain != 1.0:
        out = out * gain
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def frames(pcm: np.ndarray, rate: int, ms: int = 100) -> Iterator[np.ndarray]:
    """Cut synthesised audio into the small pieces the services stream as they synthesise, so
    clients can start playing before a sentence is complete."""
    step = max(1, rate * ms // 1000)
    return (pcm[at : at + step] for at in range(0, pcm.size, step))


def wav_header(sample_rate: int, data_bytes: int = 0x7FFFFFFF - 36) -> bytes:
    """A PCM16 mono WAV header; streaming does not know the length, so it is an estimate."""
    return b"RIFF" + struct.pack(
        "<I4s4sIHHIIHH4sI",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data_bytes,
    )
