from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from bridge.media.frame import AudioFrame
from bridge.media.g711 import ulaw_decode, ulaw_encode
from bridge.media.jitter import JitterBuffer, JitterStats
from bridge.media.rtp import RtpPacket

RATE = 8000
FRAME = 160  # 20 ms
TONE_HZ = 440
AMPLITUDE = 8000
# Largest sample-to-sample step of the tone, plus G.711 quantisation error at its peaks.
MAX_STEP = AMPLITUDE * 2 * np.pi * TONE_HZ / RATE * 1.05 + 2 * 256
NETWORK_DELAY = 0.030

Arrivals = list[tuple[float, RtpPacket]]


def tone(n: int, freq: float = TONE_HZ) -> np.ndarray:
    pcm = np.round(AMPLITUDE * np.sin(2 * np.pi * freq * np.arange(n) / RATE)).astype(np.int16)
    return ulaw_decode(ulaw_encode(pcm))


def stream(
    count: int = 100,
    *,
    seq0: int = 1000,
    ts0: int = 5000,
    ssrc: int = 1,
    freq: float = TONE_HZ,
    samples: int = FRAME,
    start: float = 0.0,
) -> tuple[Arrivals, np.ndarray]:
    """G.711 packets of a tone, each arriving NETWORK_DELAY after it is due to be sent."""
    pcm = tone(count * samples, freq)
    arrivals = [
        (
            start + i * samples / RATE + NETWORK_DELAY,
            RtpPacket(
                0,
                (seq0 + i) & 0xFFFF,
                (ts0 + i * samples) & 0xFFFFFFFF,
                ssrc,
                ulaw_encode(pcm[i * samples : (i + 1) * samples]),
            ),
        )
        for i in range(count)
    ]
    return arrivals, pcm


def decode(packet: RtpPacket) -> np.ndarray:
    return ulaw_decode(packet.payload)


def make_buffer(**delays: float) -> JitterBuffer:
    return JitterBuffer(RATE, FRAME, decode, **delays)


def fixed_delay_buffer() -> JitterBuffer:
    """min == initial, so the delay never shrinks and output is bit-exact input."""
    return make_buffer(min_delay_ms=60, initial_delay_ms=60)


def run(
    buffer: JitterBuffer, arrivals: Arrivals, frames: int
) -> tuple[np.ndarray, list[JitterStats]]:
    """Drive the buffer with a 20 ms playout clock until ``frames`` frames came out; return
    the concatenated PCM and the stats after every pop."""
    pending = sorted(arrivals, key=lambda a: a[0])
    out: list[AudioFrame] = []
    history = []
    tick = 0
    while len(out) < frames:
        now = 0.005 + tick * 0.02
        tick += 1
        while pending and pending[0][0] <= now:
            buffer.push(pending[0][1], pending[0][0])
            pending.pop(0)
        frame = buffer.pop(now)
        history.append(buffer.stats)
        if frame is not None:
            out.append(frame)
    assert [f.timestamp for f in out] == list(range(0, frames * FRAME, FRAME))
    assert all(f.sample_rate == RATE and f.num_samples == FRAME for f in out)
    return np.concatenate([f.samples for f in out]).astype(np.int64), history


def max_step(pcm: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(pcm))))


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def plays(out: np.ndarray, segment: np.ndarray) -> bool:
    """Whether ``segment`` comes out unaltered somewhere in ``out``."""
    windows = np.lib.stride_tricks.sliding_window_view(out, segment.size)
    return bool(np.any(np.all(windows == segment, axis=1)))


def delayed(arrivals: Arrivals, index: int, extra: float) -> Arrivals:
    moved = list(arrivals)
    moved[index] = (moved[index][0] + extra, moved[index][1])
    return moved


def test_pop_returns_none_until_buffered() -> None:
    buffer = fixed_delay_buffer()
    assert buffer.pop(0.0) is None
    arrivals, _ = stream(1)
    buffer.push(arrivals[0][1], arrivals[0][0])
    assert buffer.pop(0.07) is None  # held 40 ms of the 60 ms wanted
    frame = buffer.pop(0.1)
    assert frame is not None and frame.timestamp == 0


def reorder(arrivals: Arrivals) -> Arrivals:
    return delayed(delayed(arrivals, 10, 0.035), 40, 0.025)


def duplicate(arrivals: Arrivals) -> Arrivals:
    return arrivals + [(t + 0.004, p) for t, p in arrivals[20:25]]


@pytest.mark.parametrize(
    ("shape", "network", "expected"),
    [
        pytest.param({}, None, {}, id="in-order"),
        pytest.param({}, reorder, {}, id="reorder-within-depth"),
        pytest.param({}, duplicate, {"received": 105, "duplicates": 5}, id="duplicates"),
        pytest.param({"seq0": 65500}, None, {}, id="seq-wrap"),
        pytest.param({"ts0": (1 << 32) - 50 * FRAME}, None, {}, id="ts-wrap"),
        pytest.param(
            {"count": 60, "samples": 240}, None, {"received": 60, "played": 60}, id="30ms"
        ),
        pytest.param(
            {"count": 200, "samples": 80}, None, {"received": 200, "played": 200}, id="10ms"
        ),
    ],
)
def test_lossless_scenarios_are_bit_exact(
    shape: dict[str, int], network: Callable[[Arrivals], Arrivals] | None, expected: dict[str, int]
) -> None:
    arrivals, pcm = stream(**shape)
    buffer = fixed_delay_buffer()
    out, history = run(buffer, network(arrivals) if network else arrivals, pcm.size // FRAME)

    np.testing.assert_array_equal(out, pcm)
    counters = replace(history[-1], depth_ms=0, target_ms=0, jitter_ms=0)
    assert counters == JitterStats(**({"received": 100, "played": 100} | expected))


@pytest.mark.parametrize("burst", [1, 3, 10])
def test_loss_burst_is_concealed_then_fades(burst: int) -> None:
    arrivals, pcm = stream(100)
    first = 40
    kept = [a for i, a in enumerate(arrivals) if not first <= i < first + burst]
    buffer = fixed_delay_buffer()
    out, history = run(buffer, kept, 100)

    stats = history[-1]
    assert (stats.received, stats.played, stats.lost) == (100 - burst, 100 - burst, burst)
    assert stats.concealed_ms == burst * 20

    frames = out.reshape(100, FRAME)
    concealed = [rms(frames[first + i]) for i in range(burst)]
    assert concealed[0] > 0.9 * rms(pcm)  # a repeated pitch period, not silence
    assert concealed == sorted(concealed, reverse=True)  # ...fading out
    if burst >= 3:
        assert concealed[2] < 0.5 * concealed[0]
    assert all(level == 0 for level in concealed[3:])  # long gaps end silent
    assert max_step(out) <= MAX_STEP  # no click going in or coming back
    resumed = (first + burst) * FRAME + 40  # after the 5 ms crossfade back, audio is exact
    np.testing.assert_array_equal(out[resumed:], pcm[resumed:])
    np.testing.assert_array_equal(out[: first * FRAME], pcm[: first * FRAME])


def test_late_packet_is_dropped_counted_and_grows_delay() -> None:
    arrivals, pcm = stream(150)
    buffer = fixed_delay_buffer()
    out, history = run(buffer, delayed(arrivals, 30, 0.3), 170)

    stats = history[-1]
    assert (stats.received, stats.late, stats.lost, stats.played) == (150, 1, 1, 149)
    assert max(s.target_ms for s in history) == 200  # capped at max_delay_ms
    assert max(s.depth_ms for s in history) > history[30].depth_ms + 60
    assert max_step(out) <= MAX_STEP
    np.testing.assert_array_equal(out[: 30 * FRAME], pcm[: 30 * FRAME])


@pytest.mark.parametrize("stall", [0.1, 0.2])
def test_jitter_spike_grows_depth_then_shrinks_after_calm(stall: float) -> None:
    arrivals, _ = stream(1000)
    # A network stall at t=4 s: everything sent during it arrives in one burst at its end.
    spiky = [(max(t, 4.0 + stall + NETWORK_DELAY) if 4.0 <= t - NETWORK_DELAY < 4.0 + stall
              else t, p) for t, p in arrivals]  # fmt: skip
    buffer = make_buffer()
    out, history = run(buffer, spiky, 900)

    before, peak, after = history[190], max(s.depth_ms for s in history), history[-1]
    assert before.depth_ms <= 60
    assert peak >= stall * 1000 - 5  # the cursor held: the stall's audio was kept, not lost
    assert (after.lost, after.late) == (0, 0)
    assert after.depth_ms <= 40 and after.target_ms == 20
    assert max_step(out) <= MAX_STEP


def test_ssrc_change_resets_and_plays_new_stream() -> None:
    old, _ = stream(50)
    new, new_pcm = stream(60, seq0=7, ts0=123456, ssrc=2, freq=300, start=1.0)
    buffer = fixed_delay_buffer()
    stale = (old[-1][0] + 0.3, replace(old[-1][1], sequence_number=1100))  # old SSRC, too late
    out, history = run(buffer, [*old, *new, stale], 115)

    stats = history[-1]
    assert (stats.ssrc_changes, stats.resyncs, stats.late) == (1, 0, 1)
    assert plays(out, new_pcm[-50 * FRAME :])
    assert max_step(out) <= MAX_STEP


@pytest.mark.parametrize(
    "jump",
    [
        {"timestamp": 80000},  # the sender restarted its clock: +10 s, sequence continues
        {"sequence_number": 20000},  # sequence jumped far beyond any plausible loss
    ],
    ids=["timestamp-jump", "sequence-jump"],
)
def test_timeline_jump_resyncs(jump: dict[str, int]) -> None:
    arrivals, pcm = stream(100)
    moduli = {"timestamp": 1 << 32, "sequence_number": 1 << 16}

    def shift(p: RtpPacket) -> RtpPacket:
        return replace(p, **{k: (getattr(p, k) + v) % moduli[k] for k, v in jump.items()})

    moved = [(t, p if i < 50 else shift(p)) for i, (t, p) in enumerate(arrivals)]
    buffer = fixed_delay_buffer()
    out, history = run(buffer, moved, 105)

    stats = history[-1]
    assert (stats.resyncs, stats.ssrc_changes, stats.late, stats.lost) == (1, 0, 0, 0)
    assert plays(out, pcm[-45 * FRAME :])
    assert max_step(out) <= MAX_STEP


def test_stray_packet_does_not_resync() -> None:
    arrivals, pcm = stream(100)
    stray = (1.0, replace(arrivals[49][1], sequence_number=30000))
    buffer = fixed_delay_buffer()
    out, history = run(buffer, [*arrivals, stray], 100)

    assert (history[-1].resyncs, history[-1].late) == (0, 1)
    np.testing.assert_array_equal(out, pcm)


@pytest.mark.parametrize(("spread", "expected_ms"), [(0.0, 0.0), (0.010, 10.0)])
def test_rfc3550_jitter_estimate(spread: float, expected_ms: float) -> None:
    arrivals, _ = stream(300)
    wobbly = [(t + spread * (i % 2), p) for i, (t, p) in enumerate(arrivals)]
    buffer = make_buffer()
    _, history = run(buffer, wobbly, 280)
    assert history[-1].jitter_ms == pytest.approx(expected_ms, abs=0.01)


def test_silence_gap_in_sending_resumes_without_loss() -> None:
    first, pcm = stream(50)
    second, _ = stream(50, seq0=1050, ts0=5000 + 58 * FRAME, start=1.16)
    buffer = fixed_delay_buffer()
    out, history = run(buffer, first + second, 120)

    stats = history[-1]
    assert (stats.received, stats.lost, stats.late, stats.resyncs) == (100, 0, 0, 0)
    np.testing.assert_array_equal(out[: 50 * FRAME], pcm)
    assert max_step(out) <= MAX_STEP


def test_rejects_inconsistent_delays() -> None:
    with pytest.raises(ValueError, match="min_delay_ms"):
        make_buffer(min_delay_ms=100, initial_delay_ms=60)


@pytest.mark.parametrize("freq", [TONE_HZ, 0.0], ids=["tone", "silence"])
def test_excess_delay_shrinks_without_clicks_or_holes(freq: float) -> None:
    arrivals, _ = stream(500, freq=freq)
    buffer = make_buffer(min_delay_ms=20, initial_delay_ms=200)
    out, history = run(buffer, arrivals, 450)

    assert history[20].depth_ms >= 180
    assert history[-1].depth_ms <= 40
    assert (history[-1].lost, history[-1].concealed_ms) == (0, 0)
    assert max_step(out) <= MAX_STEP
    levels = [rms(frame) for frame in out.reshape(-1, FRAME)]
    if freq:  # every frame is still the tone at full level: cuts are pitch-synchronous
        assert min(levels) > 0.95 * rms(tone(FRAME * 10))
    else:
        assert max(levels) == 0
