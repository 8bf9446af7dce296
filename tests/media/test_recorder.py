from __future__ import annotations

import asyncio
import json
import random
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bridge.media.frame import AudioFrame
from bridge.media.recorder import CallRecord, Channel

RATE = 16000
START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
META = {"channel": "sip", "dialplan": "support"}


def open_record(tmp_path: Path, call_id: str = "call-1") -> CallRecord:
    times = iter([START, START + timedelta(seconds=42)])
    return CallRecord.open(tmp_path, call_id, RATE, META, now=lambda: next(times))


def tone(freq: float, rate: int, seconds: float, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def feed(
    record: CallRecord,
    channel: Channel,
    audio: np.ndarray,
    rate: int,
    at: float,
    jitter: float = 0.0,
    seed: int = 0,
) -> None:
    """Write ``audio`` as 20 ms frames from ``at`` on, with start times off by up to ``jitter``."""
    rng = random.Random(seed)
    size = rate // 50
    for i in range(0, len(audio), size):
        start = at + i / rate + rng.uniform(-jitter, jitter)
        record.write_audio(channel, AudioFrame(audio[i : i + size], rate), start)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path / "recording.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (2, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, 2)
        return audio, w.getframerate()


def active_span(channel: np.ndarray, rate: int) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(channel.astype(np.int32)) > 2000)
    return loud[0] / rate, (loud[-1] + 1) / rate


def peak_hz(channel: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(channel.astype(np.float64)))
    return float(np.fft.rfftfreq(len(channel), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    ("caller_rate", "bot_rate"), [(8000, 16000), (16000, 48000), (48000, 8000)]
)
def test_channels_hold_their_tones_at_their_times(
    tmp_path: Path, caller_rate: int, bot_rate: int
) -> None:
    record = open_record(tmp_path)
    feed(record, "caller", tone(440, caller_rate, 1.0), caller_rate, at=0.5, jitter=0.01)
    feed(record, "bot", tone(1000, bot_rate, 1.0), bot_rate, at=1.0, jitter=0.01, seed=1)
    record.close("caller hung up", {})

    audio, rate = read_wav(record.path)
    assert rate == RATE
    assert len(audio) == pytest.approx(2.0 * RATE, abs=RATE * 0.03)
    caller, bot = audio[:, 0], audio[:, 1]
    for channel, freq, (begin, end) in ((caller, 440, (0.5, 1.5)), (bot, 1000, (1.0, 2.0))):
        assert peak_hz(channel, RATE) == pytest.approx(freq, abs=2)
        onset, offset = active_span(channel, RATE)
        assert onset == pytest.approx(begin, abs=0.02)
        assert offset == pytest.approx(end, abs=0.02)


def test_long_jittery_streams_do_not_drift(tmp_path: Path) -> None:
    record = open_record(tmp_path)
    marker = np.zeros(60 * 8000, np.int16)
    marker[59 * 8000 :] = tone(440, 8000, 1.0)
    feed(record, "caller", marker, 8000, at=0.0, jitter=0.015)
    feed(record, "bot", np.zeros(60 * RATE, np.int16), RATE, at=0.0, jitter=0.015, seed=2)
    record.close("done", {})
    audio, rate = read_wav(record.path)
    assert active_span(audio[:, 0], rate) == pytest.approx((59.0, 60.0), abs=0.02)


def test_gaps_are_padded_and_late_duplicates_dropped(tmp_path: Path) -> None:
    record = open_record(tmp_path)
    first = tone(440, RATE, 0.5)
    feed(record, "caller", first, RATE, at=0.0)
    feed(record, "caller", first[: RATE // 10], RATE, at=0.0)  # resent long after
    feed(record, "caller", np.zeros(RATE // 2, np.int16), RATE, at=0.5)  # still lined up
    feed(record, "caller", tone(440, RATE, 0.5), RATE, at=1.5)  # after half a second of nothing
    record.close("done", {})
    caller = read_wav(record.path)[0][:, 0]
    assert len(caller) == 2 * RATE
    assert np.array_equal(caller[: RATE // 2], first)
    assert not caller[RATE // 2 : 3 * RATE // 2].any()
    assert np.array_equal(caller[3 * RATE // 2 :], first)


def test_audio_reaches_disk_during_the_call_even_with_one_channel_silent(tmp_path: Path) -> None:
    record = open_record(tmp_path)
    feed(record, "caller", tone(440, RATE, 5.0), RATE, at=0.0)  # the bot never says a thing
    audio, _ = read_wav(record.path)  # readable before close: the header is kept current
    assert len(audio) >= 2.5 * RATE
    assert not audio[:, 1].any()
    record.close("done", {})
    assert len(read_wav(record.path)[0]) == 5 * RATE


def test_transcript_and_summary(tmp_path: Path) -> None:
    record = open_record(tmp_path, "a84b4c76e66710@pc33.example.com/x")
    assert record.path.name == "20250301T120000Z-a84b4c76e66710@pc33.example.com_x"
    summary = json.loads((record.path / "call.json").read_text())
    assert summary["end_reason"] is None  # written at open, so a crashed call still has one

    events = [
        {"who": "bot", "text": "Hello, how can I help?", "heard": "Hello,", "interrupted": True},
        {"who": "caller", "text": "Billing, please.", "start": 1.2, "end": 2.0},
        {"who": "system", "text": "transfer", "start": 2.5, "end": 2.5},
    ]
    for event in events:
        record.add_event(event)
    # Lines are on disk as soon as they are added.
    lines = (record.path / "transcript.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == events
    with pytest.raises(ValueError, match="who"):
        record.add_event({"who": "robot", "text": "?"})

    record.close("transferred", {"asr_ms_p50": 180})
    record.close("again", {"ignored": True})
    record.write_audio("caller", AudioFrame.silence(RATE, 20), 9.0)
    record.add_event({"who": "system", "text": "late"})

    assert json.loads((record.path / "call.json").read_text()) == {
        "call_id": "a84b4c76e66710@pc33.example.com/x",
        "channel": "sip",
        "dialplan": "support",
        "start_utc": "2025-03-01T12:00:00+00:00",
        "end_utc": "2025-03-01T12:00:42+00:00",
        "end_reason": "transferred",
        "metrics": {"asr_ms_p50": 180},
    }
    assert len((record.path / "transcript.jsonl").read_text().splitlines()) == 3


def test_close_without_audio_leaves_valid_empty_files(tmp_path: Path) -> None:
    record = open_record(tmp_path)
    record.close("rejected", {})
    audio, rate = read_wav(record.path)
    assert (audio.shape, rate) == ((0, 2), RATE)
    assert (record.path / "transcript.jsonl").read_text() == ""
    assert sorted(p.name for p in record.path.iterdir()) == [
        "call.json",
        "recording.wav",
        "transcript.jsonl",
    ]


async def test_closing_records_leaves_the_event_loop_free(tmp_path: Path) -> None:
    """Calls often end together: their records are finished off the loop, and are complete
    once ``aclose`` returns."""
    records = [open_record(tmp_path, f"call-{i}") for i in range(2)]
    metrics = {"lateness_ms": [i / 7 for i in range(100_000)]}  # slow to write: a big summary
    for record in records:
        feed(record, "caller", tone(440, RATE, 1.0), RATE, 0.0)
        feed(record, "bot", tone(880, RATE, 1.0), RATE, 0.0)
    gaps: list[float] = []
    closing = asyncio.gather(*(record.aclose("done", metrics) for record in records))
    started = last = time.monotonic()
    while not closing.done():
        await asyncio.sleep(0.002)
        gaps.append(time.monotonic() - last)
        last = time.monotonic()
    await closing
    took = time.monotonic() - started

    assert took > 0.3  # the closing work was long enough for a stall to show
    # A close on the loop would be one gap as long as all of it; off the loop, the loop still
    # waits its turn for the interpreter lock behind two closing threads now and then.
    assert max(gaps) < took / 2
    for record in records:
        assert json.loads((record.path / "call.json").read_text())["metrics"] == metrics
        audio, _ = read_wav(record.path)
        assert audio.shape == (RATE, 2)
