from __future__ import annotations

import numpy as np
import pytest

from bridge.media.frame import AudioFrame


def test_clock_fields_and_value_semantics() -> None:
    samples = np.arange(160, dtype=np.int16)
    frame = AudioFrame(samples, 8000, 320)
    assert (frame.num_samples, frame.end_timestamp, frame.duration) == (160, 480, 0.02)
    assert frame.samples is samples
    assert AudioFrame(samples, 8000) == AudioFrame(samples, 8000, 0)
    assert AudioFrame(samples, 8000, 1) != AudioFrame(samples, 8000, 2)
    assert AudioFrame.from_bytes(samples.tobytes(), 8000, 7).end_timestamp == 167


@pytest.mark.parametrize(
    "samples",
    [
        np.zeros(160, np.float32),
        np.zeros(160, np.int32),
        np.zeros(160, ">i2"),  # int16, but not in the machine's byte order
        np.zeros((80, 2), np.int16),
    ],
    ids=["float", "int32", "big-endian", "stereo"],
)
def test_rejects_anything_but_mono_int16(samples: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-D int16"):
        AudioFrame(samples, 8000)


@pytest.mark.parametrize("rate", [0, -8000])
def test_rejects_non_positive_rates(rate: int) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AudioFrame(np.zeros(160, np.int16), rate)
