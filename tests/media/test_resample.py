import itertools

import numpy as np
import pytest

from bridge.media.frame import AudioFrame
from bridge.media.resample import Resampler

RATES = [8000, 16000, 22050, 24000, 48000]
PAIRS = [(a, b) for a, b in itertools.product(RATES, RATES) if a != b]
TONE_HZ = 440
AMPLITUDE = 10000


def sine(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


def one_shot(in_rate: int, out_rate: int, samples: np.ndarray) -> np.ndarray:
    resampler = Resampler(in_rate, out_rate)
    return np.concatenate([resampler.process(samples), resampler.flush()])


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_random_chunks_match_one_shot_without_clicks(in_rate: int, out_rate: int) -> None:
    samples = sine(in_rate, 1.0)
    rng = np.random.default_rng(in_rate * 7 + out_rate)
    resampler = Resampler(in_rate, out_rate)
    cuts = np.cumsum(rng.integers(1, in_rate // 25, size=100))
    chunks = [resampler.process(part) for part in np.split(samples, cuts[cuts < samples.size])]
    streamed = np.concatenate([*chunks, resampler.flush()])

    reference = one_shot(in_rate, out_rate, samples)
    assert streamed.dtype == np.int16
    assert streamed.size == reference.size == out_rate
    assert np.max(np.abs(streamed.astype(int) - reference)) <= 4
    # A clean sine never moves faster than A * 2π f / fs per sample; a click would.
    allowed_step = AMPLITUDE * 2 * np.pi * TONE_HZ / out_rate * 1.05 + 4
    steady = streamed[out_rate // 20 : -out_rate // 20].astype(int)
    assert np.max(np.abs(np.diff(steady))) <= allowed_step
    assert (
        abs(np.sqrt(np.mean(steady.astype(float) ** 2)) - AMPLITUDE / np.sqrt(2)) < 0.01 * AMPLITUDE
    )


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 48000), (48000, 8000), (22050, 16000)])
def test_no_drift_over_a_minute_of_20ms_frames(in_rate: int, out_rate: int) -> None:
    resampler = Resampler(in_rate, out_rate)
    frame = sine(in_rate, 0.02)
    produced = [resampler.process(frame).size for _ in range(3000)]
    consumed_out = 60 * out_rate
    held_back = consumed_out - sum(produced)
    assert 0 <= held_back <= 0.04 * out_rate  # only the filter delay, not growing
    late = produced[1000:]
    assert max(late) - min(late) <= 1  # steady per-frame output, no bursts
    assert resampler.flush().size == held_back


@pytest.mark.parametrize("rate", RATES)
def test_identity_is_passthrough(rate: int) -> None:
    resampler = Resampler(rate, rate)
    samples = sine(rate, 0.02)
    frame = AudioFrame(samples, rate, timestamp=1234)
    assert resampler.process(samples) is samples
    assert resampler.process_frame(frame) is frame
    assert resampler.flush().size == 0


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "first_timestamp"),
    [(8000, 16000, 0), (48000, 8000, 960), (16000, 24000, 320)],
)
def test_frame_timestamps_continue_in_output_samples(
    in_rate: int, out_rate: int, first_timestamp: int
) -> None:
    resampler = Resampler(in_rate, out_rate)
    samples = sine(in_rate, 1.0)
    step = in_rate // 50
    frames = [
        resampler.process_frame(AudioFrame(samples[i : i + step], in_rate, first_timestamp + i))
        for i in range(0, samples.size, step)
    ]
    expected = first_timestamp * out_rate // in_rate
    for frame in frames:
        assert frame.sample_rate == out_rate
        assert frame.timestamp == expected
        expected = frame.end_timestamp
    streamed = np.concatenate([f.samples for f in frames]).astype(int)
    reference = one_shot(in_rate, out_rate, samples)[: streamed.size]
    assert np.max(np.abs(streamed - reference)) <= 4


def test_rejects_wrong_rate_frame() -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        Resampler(8000, 48000).process_frame(AudioFrame.silence(16000, 20))
