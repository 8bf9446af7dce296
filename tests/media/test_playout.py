from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from bridge.media.frame import AudioFrame
from bridge.media.playout import (
    Playout,
    PlayoutClock,
    UtteranceFinished,
    UtteranceStarted,
)
from bridge.speech.base import SpeechChunk, WordMark

RATE = 8000


def chunk(
    ms: int, text: str = "", words: tuple[WordMark, ...] = (), value: int = 1000
) -> SpeechChunk:
    audio = AudioFrame(np.full(RATE * ms // 1000, value, np.int16), RATE)
    return SpeechChunk(audio, text, words)


def play(playout: Playout, ms: int) -> list[AudioFrame]:
    return [playout.next_frame() for _ in range(ms // playout.frame_ms)]


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps."""

    def __init__(self, jitter: float = 0.0, seed: int = 1) -> None:
        self.now = 1000.0
        self.jitter = jitter
        self.stalls: dict[int, float] = {}
        self.sleeps = 0
        self._random = random.Random(seed)

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay + self._random.uniform(0, self.jitter) + self.stalls.get(self.sleeps, 0)
        self.sleeps += 1


# --- clock -------------------------------------------------------------------------------------


async def test_clock_does_not_drift_over_10000_ticks_with_jittery_sleep() -> None:
    fake = FakeClock(jitter=0.004)
    clock = PlayoutClock(0.020, time_fn=fake.time, sleep_fn=fake.sleep)
    start = fake.now
    ticks = [await clock.wait_next() for _ in range(10_000)]
    assert ticks == list(range(10_000))
    assert clock.skipped == 0
    # Each tick is late by at most one sleep's jitter, however many ticks came before.
    assert fake.now - (start + 9_999 * 0.020) == pytest.approx(clock.lateness[-1])
    assert min(clock.lateness) >= -1e-9 and max(clock.lateness) <= 0.004 + 1e-9


async def test_clock_catches_up_small_lag_without_skipping() -> None:
    fake = FakeClock()
    fake.stalls[3] = 0.050  # within max_lag: owed ticks fire back to back
    clock = PlayoutClock(0.020, max_lag=0.100, time_fn=fake.time, sleep_fn=fake.sleep)
    ticks = [await clock.wait_next() for _ in range(10)]
    assert ticks == list(range(10))
    assert clock.skipped == 0
    assert clock.lateness[-1] == pytest.approx(0)


async def test_clock_resyncs_after_long_stall_and_counts_skipped_ticks() -> None:
    fake = FakeClock()
    fake.stalls[5] = 1.010  # the loop was blocked for a second
    clock = PlayoutClock(0.020, max_lag=0.100, time_fn=fake.time, sleep_fn=fake.sleep)
    start = fake.now
    ticks = [await clock.wait_next() for _ in range(10)]
    assert ticks[:6] == list(range(6))
    # Tick 5 fired 1.01 s late; the next one is the most recent grid point, not tick 6.
    assert ticks[6] == 55
    assert ticks[6:] == list(range(55, 59))
    assert clock.skipped == 49
    assert clock.lateness[6] == pytest.approx(0.010)
    assert clock.lateness[-1] == pytest.approx(0)
    assert fake.now == pytest.approx(start + 58 * 0.020)


def test_clock_core_is_driven_by_explicit_times() -> None:
    clock = PlayoutClock(0.020)
    assert clock.time_to_next(10.0) == 0
    assert clock.tick(10.001) == 0
    assert clock.time_to_next(10.005) == pytest.approx(0.015)
    assert clock.tick(10.021) == 1
    assert list(clock.lateness) == pytest.approx([0.001, 0.001])


# --- frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "samples"), [(8000, 160), (16000, 320), (48000, 960)])
def test_frames_have_fixed_size_and_continuous_timestamps(rate: int, samples: int) -> None:
    playout = Playout(rate)
    playout.begin_utterance("u")
    playout.push("u", SpeechChunk(AudioFrame(np.ones(samples * 5 // 2, np.int16), rate), "hi"))
    playout.end_utterance("u")
    frames = [playout.next_frame() for _ in range(6)]
    assert [f.num_samples for f in frames] == [samples] * 6
    assert [f.timestamp for f in frames] == [i * samples for i in range(6)]
    assert {f.sample_rate for f in frames} == {rate}
    assert [int(f.samples.sum()) for f in frames] == [samples, samples, samples // 2, 0, 0, 0]


def test_frames_inside_one_chunk_are_its_audio_as_is_and_match_assembled_frames() -> None:
    """A frame lying within one queued chunk is a view of it; one spanning chunks, starting an
    utterance or running out of audio is assembled. Both must play exactly the pushed audio."""
    rng = np.random.default_rng(4)
    chunks = [rng.integers(-3000, 3000, n, dtype=np.int16) for n in (480, 100, 300, 160, 7, 633)]
    playout = Playout(RATE)
    playout.begin_utterance("u")
    for samples in chunks:
        playout.push("u", SpeechChunk(AudioFrame(samples, RATE), "word"))
    playout.end_utterance("u")

    frames = play(playout, 240)
    audio, played = np.concatenate(chunks), np.concatenate([f.samples for f in frames])
    assert np.array_equal(played[: len(audio)], audio)
    assert not played[len(audio) :].any()
    as_is = [any(np.shares_memory(f.samples, c) for c in chunks) for f in frames]
    assert as_is == [False, True, True, False, True, False, False, True, True, True, False, False]
    assert playout.pop_events() == [
        UtteranceStarted("u", 0),
        UtteranceFinished("u", "word " * 5 + "word", "word " * 5 + "word", False, 210),
    ]
    assert not playout.speaking


def test_idle_playout_gives_silence() -> None:
    playout = Playout(RATE)
    frame = playout.next_frame()
    assert not frame.samples.any()
    assert not playout.speaking
    assert playout.pop_events() == []


def test_utterances_play_in_order_back_to_back_with_events() -> None:
    playout = Playout(RATE)
    playout.begin_utterance("a")
    playout.begin_utterance("b", barge_in=False)
    playout.push("b", chunk(40, "Second.", value=2))
    playout.end_utterance("b")
    playout.push("a", chunk(30, "First one.", value=1))
    playout.end_utterance("a")

    frames = play(playout, 80)
    audio = np.concatenate([f.samples for f in frames])
    assert list(audio[: RATE * 30 // 1000]) == [1] * 240
    assert list(audio[240:560]) == [2] * 320  # b follows a within the same frame
    assert not audio[560:].any()
    assert playout.pop_events() == [
        UtteranceStarted("a", 0),
        UtteranceFinished("a", "First one.", "First one.", False, 30),
        UtteranceStarted("b", 1),
        UtteranceFinished("b", "Second.", "Second.", False, 40),
    ]


def test_utterance_waits_for_slow_tts_until_ended() -> None:
    playout = Playout(RATE)
    playout.begin_utterance("u")
    playout.begin_utterance("later")
    playout.push("later", chunk(20, "Later.", value=9))
    assert not play(playout, 40)[0].samples.any()  # nothing yet: "later" must not jump ahead
    assert not playout.speaking

    playout.push("u", chunk(20, "Hello", value=1))
    play(playout, 20)
    assert playout.pop_events() == [UtteranceStarted("u", 2)]
    silent = play(playout, 60)  # queue ran dry, utterance still open
    assert all(not f.samples.any() for f in silent)
    assert playout.speaking
    assert playout.pop_events() == []

    playout.push("u", chunk(20, "world."))
    playout.end_utterance("u")
    play(playout, 20)
    assert playout.pop_events() == [
        UtteranceFinished("u", "Hello world.", "Hello world.", False, 40)
    ]
    assert play(playout, 20)[0].samples[0] == 9
    assert playout.pop_events()[0] == UtteranceStarted("later", 7)


def test_speaking_and_interruptible_follow_the_current_utterance() -> None:
    playout = Playout(RATE)
    for uid, barge_in in (("polite", False), ("chatty", True)):
        playout.begin_utterance(uid, barge_in)
        playout.push(uid, chunk(40, uid))
        playout.end_utterance(uid)
    states = []
    for _ in range(5):
        playout.next_frame()
        states.append((playout.speaking, playout.interruptible))
    assert states == [(True, False), (False, False), (True, True), (False, False), (False, False)]


# --- flush and heard text ----------------------------------------------------------------------

FOUR = "one two three four"
WORDS = (WordMark("one", 100), WordMark("two", 200), WordMark("three", 300))


@pytest.mark.parametrize(
    ("chunks", "played_ms", "heard"),
    [
        ([chunk(300, "one two three", WORDS)], 0, ""),
        ([chunk(300, "one two three", WORDS)], 80, ""),
        ([chunk(300, "one two three", WORDS)], 100, "one"),
        ([chunk(300, "one two three", WORDS)], 260, "one two"),
        # without marks: 3 words over 300 ms, rounded down to whole words
        ([chunk(300, "one two three")], 80, ""),
        ([chunk(300, "one two three")], 100, "one"),
        ([chunk(300, "one two three")], 280, "one two"),
        # segments: completed ones count whole, the current one partially
        ([chunk(100, "Hi there."), chunk(300, "one two three", WORDS)], 100, "Hi there."),
        ([chunk(100, "Hi there."), chunk(300, "one two three", WORDS)], 320, "Hi there. one two"),
        ([chunk(100, "Hi there."), chunk(300, "one two three")], 240, "Hi there. one"),
        # continuation chunks (no text) extend the segment before them
        ([chunk(100, FOUR), chunk(100), chunk(200, "Next.")], 200, FOUR),
        ([chunk(100, FOUR), chunk(100)], 140, "one two"),
    ],
)
def test_flush_mid_utterance_reports_heard_text(
    chunks: list[SpeechChunk], played_ms: int, heard: str
) -> None:
    playout = Playout(RATE, max_queued_ms=10_000)
    playout.begin_utterance("u")
    for c in chunks:
        playout.push("u", c)
    playout.end_utterance("u")
    play(playout, played_ms)
    (cut,) = playout.flush("barge-in")
    said = " ".join(c.text for c in chunks if c.text)
    assert cut == UtteranceFinished("u", said, heard, True, played_ms, "barge-in")
    assert playout.pop_events()[-1] == cut
    assert not playout.speaking
    assert not playout.next_frame().samples.any()


def test_flush_does_not_claim_last_word_while_segment_audio_is_still_arriving() -> None:
    playout = Playout(RATE)
    playout.begin_utterance("u")
    playout.push("u", chunk(100, "one two three"))  # the rest of its audio is still coming
    play(playout, 120)
    (cut,) = playout.flush("barge-in")
    assert cut.heard == "one two"
    assert cut.interrupted


def test_flush_reports_queued_utterances_and_ignores_their_late_chunks() -> None:
    playout = Playout(RATE)
    for uid in ("a", "b"):
        playout.begin_utterance(uid)
        playout.push(uid, chunk(100, f"Utterance {uid}."))
    play(playout, 40)
    cut = playout.flush("hangup")
    assert [(c.id, c.heard, c.played_ms, c.interrupted) for c in cut] == [
        ("a", "", 40, True),
        ("b", "", 0, True),
    ]
    assert playout.queued_ms == 0
    playout.push("a", chunk(20, "late"))  # the producer had not been cancelled yet
    playout.end_utterance("a")
    assert not playout.next_frame().samples.any()
    with pytest.raises(ValueError, match="already exists"):
        playout.begin_utterance("a")


def test_flush_when_idle_is_a_no_op() -> None:
    playout = Playout(RATE)
    playout.next_frame()
    assert playout.flush("barge-in") == []
    assert playout.pop_events() == []
    assert playout.next_frame().timestamp == 160


def test_errors_for_unknown_utterance_or_wrong_rate() -> None:
    playout = Playout(RATE)
    with pytest.raises(KeyError):
        playout.push("nope", chunk(20))
    playout.begin_utterance("u")
    with pytest.raises(ValueError, match="16000 Hz"):
        playout.push("u", SpeechChunk(AudioFrame.silence(16000, 20)))


# --- queue bound -------------------------------------------------------------------------------


def test_queue_bound_accepts_until_full_then_refuses_loudly() -> None:
    playout = Playout(RATE, max_queued_ms=100)
    playout.begin_utterance("u")
    playout.push("u", chunk(60))
    assert playout.free_ms == 40
    playout.push("u", chunk(60))  # accepted while not full: overshoot by at most one chunk
    assert (playout.queued_ms, playout.free_ms) == (120, 0)
    with pytest.raises(OverflowError):
        playout.push("u", chunk(20))
    play(playout, 40)
    assert (playout.queued_ms, playout.free_ms) == (80, 20)


async def test_producer_awaiting_space_resumes_as_frames_play() -> None:
    playout = Playout(RATE, max_queued_ms=100)
    playout.begin_utterance("u")
    pushed: list[int] = []

    async def produce() -> None:
        for i in range(10):
            await playout.wait_for_space()
            playout.push("u", chunk(50, value=i + 1))
            pushed.append(i)
        playout.end_utterance("u")

    producer = asyncio.create_task(produce())
    frames: list[AudioFrame] = []
    while not producer.done() or playout.speaking:
        await asyncio.sleep(0)
        frames.append(playout.next_frame())
        assert playout.queued_ms <= 150
    await producer
    audio = np.concatenate([f.samples for f in frames])
    values = audio[audio != 0]
    assert len(values) == 10 * 400  # nothing dropped
    assert list(np.unique(values)) == list(range(1, 11))
    assert np.all(np.diff(values) >= 0)  # and in order
