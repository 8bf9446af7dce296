"""Answering-machine detection: the beep detector, the cadence and word rules, the dialplan step,
and the accuracy over a synthesised labelled set of people and voicemail greetings."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bridge.campaign.amd import (
    AmdSettings,
    AnsweringMachineDetector,
    BeepHeard,
    Finished,
    Verdict,
    tone_of,
)
from bridge.config import Config
from bridge.dialog.base import CallerText, CallStarted, DetectMachine, Hangup, MachineDetected, Say
from bridge.dialog.flow import Flow
from bridge.dialog.library import check_file, load_dialplan
from bridge.media.frame import AudioFrame
from bridge.media.resample import Resampler
from bridge.media.vad import Vad
from bridge.speech.factory import SpeechEngines
from tests.campaign.farend import Item, labelled_set, over_the_line, tone

RATE = 16000
FRAME = 320  # 20 ms


def _frames(audio: np.ndarray) -> list[AudioFrame]:
    return [
        AudioFrame(audio[i : i + FRAME], RATE, i) for i in range(0, len(audio) - FRAME + 1, FRAME)
    ]


def _cadence(
    pattern: list[tuple[bool, float]], settings: AmdSettings | None = None
) -> tuple[AnsweringMachineDetector, list[object]]:
    """Feed silent frames flagged speech or not by the VAD: (speech, seconds) runs."""
    detector = AnsweringMachineDetector(settings)
    events: list[object] = []
    quiet = AudioFrame(np.zeros(FRAME, np.int16), RATE)
    for speech, seconds in pattern:
        for _ in range(round(seconds * 50)):
            events += detector.feed(quiet, speech)
    return detector, events


def _verdict(events: list[object]) -> Verdict:
    (verdict,) = [e for e in events if isinstance(e, Verdict)]
    return verdict


# --- the beep detector ---------------------------------------------------------------------


@pytest.mark.parametrize("hz", [440.0, 800.0, 1400.0, 1950.0])
def test_a_pure_tone_is_found_at_its_frequency(hz: float) -> None:
    t = np.arange(FRAME) / RATE
    frame = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    found = tone_of(frame, RATE, AmdSettings())
    assert found is not None and abs(found - hz) <= 50


def test_speech_like_sounds_are_not_tones() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(FRAME) / RATE
    settings = AmdSettings()
    dtmf = 6000 * (np.sin(2 * np.pi * 770 * t) + np.sin(2 * np.pi * 1336 * t))
    noise = rng.normal(0, 4000, FRAME)
    vowel = sum(3000 / k * np.sin(2 * np.pi * 130 * k * t) for k in range(1, 20))  # harmonics
    low = 8000 * np.sin(2 * np.pi * 300 * t)  # a hum below the band
    quiet = 50 * np.sin(2 * np.pi * 1000 * t)  # under beep_min_dbfs
    for name, sound in {
        "dtmf": dtmf,
        "noise": noise,
        "vowel": vowel,
        "hum": low,
        "quiet": quiet,
    }.items():
        assert tone_of(sound.astype(np.int16), RATE, settings) is None, name


def test_a_beep_is_reported_when_it_ends_with_its_times() -> None:
    lead = np.zeros(RATE, np.int16)
    beep = Resampler(8000, RATE).process(tone(1000, 0.4, -10))
    audio = np.concatenate([lead, beep, np.zeros(RATE // 2, np.int16)])
    detector = AnsweringMachineDetector()
    events = [e for f in _frames(audio) for e in detector.feed(f, False)]
    (heard,) = [e for e in events if isinstance(e, BeepHeard)]
    assert abs(heard.start_ms - 1000) <= 20 and abs(heard.end_ms - 1400) <= 20, heard
    assert abs(heard.frequency_hz - 1000) <= 50
    assert _verdict(events).result == "machine" and _verdict(events).cause == "beep"


def test_a_tone_too_short_for_a_beep_is_ignored() -> None:
    audio = np.concatenate([Resampler(8000, RATE).process(tone(1000, 0.1, -10))] * 1)
    audio = np.concatenate([audio, np.zeros(RATE // 2, np.int16)])
    detector = AnsweringMachineDetector()
    assert not [e for f in _frames(audio) for e in detector.feed(f, False)]


# --- cadence and words ----------------------------------------------------------------------


def test_a_short_greeting_then_silence_is_a_human() -> None:
    _, events = _cadence([(False, 0.5), (True, 0.6), (False, 2.0)])
    verdict = _verdict(events)
    assert (verdict.result, verdict.cause) == ("human", "short-greeting")
    assert verdict.at_ms == 1900  # 0.8 s of silence after the greeting
    assert isinstance(events[-1], Finished) and events[-1].beep is None


def test_a_long_greeting_is_a_machine() -> None:
    _, events = _cadence([(False, 0.3), (True, 3.0)])
    verdict = _verdict(events)
    assert (verdict.result, verdict.cause) == ("machine", "long-greeting")
    assert verdict.at_ms == 1800


def test_many_words_are_a_machine() -> None:
    word = [(True, 0.2), (False, 0.3)]
    _, events = _cadence([(False, 0.2), *word * 5])
    assert (_verdict(events).result, _verdict(events).cause) == ("machine", "max-words")


def test_silence_throughout_is_unknown_and_so_is_running_out_of_time() -> None:
    _, events = _cadence([(False, 3.0)])
    assert (_verdict(events).result, _verdict(events).cause) == ("unknown", "initial-silence")
    # Noise blips shorter than a word neither make a greeting nor end the silence.
    blips = [(True, 0.06), (False, 0.14)] * 20
    _, events = _cadence(blips, AmdSettings(timeout_s=2.0))
    assert (_verdict(events).result, _verdict(events).cause) == ("unknown", "timeout")


def test_recognised_voicemail_words_make_a_machine() -> None:
    detector = AnsweringMachineDetector()
    assert detector.hear("Hi, this is Sam.") == []
    (verdict, finished) = detector.hear("Please leave a message.")
    assert isinstance(verdict, Verdict) and (verdict.result, verdict.cause) == ("machine", "phrase")
    assert isinstance(finished, Finished)
    detector = AnsweringMachineDetector()
    events = detector.hear("one two three four five six seven eight nine")
    assert _verdict(events).cause == "words"
    events = AnsweringMachineDetector().hear("You\u2019ve reached Sam.")  # typographic apostrophe
    assert _verdict(events).cause == "phrase"


def test_waiting_for_the_beep_finishes_at_its_end_or_after_silence() -> None:
    settings = AmdSettings(wait_for_beep=True)
    beep = Resampler(8000, RATE).process(tone(800, 0.5, -10))
    speech = np.zeros(RATE * 4, np.int16)
    audio = np.concatenate([speech, np.zeros(RATE // 2, np.int16), beep, np.zeros(RATE, np.int16)])
    detector = AnsweringMachineDetector(settings)
    events = []
    for frame in _frames(audio):
        events += detector.feed(frame, frame.timestamp < len(speech))
    verdict = _verdict(events)
    assert verdict.result == "machine" and verdict.at_ms < 2000
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.beep is not None
    assert abs(finished.at_ms - 5000) <= 40, finished  # the beep's end, not the verdict
    # No beep: the greeting's end is a long silence.
    _, events = _cadence([(True, 4.0), (False, 4.0)], settings)
    assert isinstance(events[-1], Finished) and events[-1].at_ms == 7000
    assert events[-1].beep is None


def test_impossible_thresholds_are_refused() -> None:
    assert AmdSettings(greeting_ms=0).validate() == "greeting_ms: must be positive"
    assert AmdSettings(beep_low_hz=2500).validate() is not None
    assert AmdSettings().validate() is None


# --- the dialplan step ----------------------------------------------------------------------

PLAN = """\
name: outbound
start: detect
steps:
  detect:
    amd:
      timeout_s: 4
      wait_for_beep: true
      greeting_ms: 1800
      on_human: talk
      on_machine: message
  talk:
    say: Hello, this is {{ amd.result }} ({{ amd.cause }}).
    hangup: talked
  message:
    say: Please call us back.
    hangup: voicemail
"""


def _plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "outbound.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_amd_step_asks_for_detection_and_branches_on_the_verdict(tmp_path: Path) -> None:
    plan = load_dialplan(_plan(tmp_path, PLAN))
    flow = Flow(plan)
    (effect,) = flow.handle(CallStarted())
    assert isinstance(effect, DetectMachine)
    assert effect.settings.greeting_ms == 1800 and effect.settings.wait_for_beep
    assert flow.handle(CallerText("hello")) == []  # the greeting's words are not an answer
    said, hangup = flow.handle(MachineDetected("human", "short-greeting"))
    assert said == Say("Hello, this is human (short-greeting).") and hangup == Hangup("talked")

    flow = Flow(plan)
    flow.handle(CallStarted())
    said, hangup = flow.handle(MachineDetected("machine", "long-greeting", beep=True))
    assert said.text == "Please call us back." and hangup == Hangup("voicemail")
    assert flow.variables["amd"] == {"result": "machine", "cause": "long-greeting", "beep": True}
    flow = Flow(plan)
    flow.handle(CallStarted())
    said, _ = flow.handle(MachineDetected("unknown", "initial-silence"))
    assert said.text.startswith("Hello, this is unknown")  # unsure: talk, as to a person


def test_bridge_check_names_bad_amd_steps(tmp_path: Path) -> None:
    _, problems = check_file(_plan(tmp_path, PLAN.replace("on_machine: message", "on_machine: x")))
    assert f"{tmp_path}/outbound.yaml:10: steps.detect.on_machine: unknown step 'x'" in problems
    _, problems = check_file(_plan(tmp_path, PLAN.replace("greeting_ms: 1800", "greeting_ms: -1")))
    assert problems == [
        f"{tmp_path}/outbound.yaml:6: steps.detect.amd: greeting_ms: must be positive"
    ]
    _, problems = check_file(_plan(tmp_path, PLAN.replace("      on_machine: message\n", "")))
    assert len(problems) == 2 and "set on_human and on_machine" in problems[0], problems
    assert "steps.message: unreachable step" in problems[1]


def test_the_shipped_reminder_detects_answering_machines() -> None:
    plan = load_dialplan(Path(__file__).parents[2] / "dialplans" / "appointment-reminder.yaml")
    (effect,) = Flow(plan).handle(CallStarted())
    assert isinstance(effect, DetectMachine) and effect.settings.wait_for_beep


# --- accuracy over the labelled set -----------------------------------------------------------


def _classify(item: Item, settings: AmdSettings, config: Config) -> tuple[Verdict, Finished]:
    """The item through G.711, resampled to the recogniser's rate like the call does, with the
    configured VAD's per-frame decisions."""
    resampler = Resampler(8000, RATE)
    audio = np.concatenate([resampler.process(over_the_line(item)), resampler.flush()])
    vad_config = config.speech.vad
    vad = Vad(RATE, engine=vad_config.engine, threshold=vad_config.threshold)  # type: ignore[arg-type]
    detector = AnsweringMachineDetector(settings)
    verdict = None
    for frame in _frames(audio.astype(np.int16)):
        vad.process(frame)
        for event in detector.feed(frame, vad.probability >= vad.threshold):
            if isinstance(event, Verdict):
                verdict = event
            elif isinstance(event, Finished):
                assert verdict is not None
                return verdict, event
    raise AssertionError(f"no verdict for {item.text!r} ({item.voice})")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_accuracy_over_the_labelled_set(speech_engines: SpeechEngines) -> None:
    items = labelled_set(speech_engines.tts._runtime.piper())  # type: ignore[attr-defined]
    assert len(items) >= 40
    settings = AmdSettings(wait_for_beep=True)
    confusion: Counter[tuple[str, str]] = Counter()
    misses = []
    beep_errors_ms = []
    for item in items:
        verdict, finished = _classify(item, settings, Config())
        confusion[(item.label, verdict.result)] += 1
        if verdict.result != item.label:
            misses.append(f"{item.label} as {verdict.result} ({verdict.cause}): {item.text!r}")
        if item.beep is not None and verdict.result == "machine":
            assert finished.beep is not None, item
            _, end, hz = item.beep
            assert abs(finished.beep.frequency_hz - hz) <= 50, (finished.beep, item.beep)
            beep_errors_ms.append(abs(finished.at_ms - end * 1000))
    labels = ("human", "machine", "unknown")
    table = "\n".join(
        f"{truth:>8} | " + " ".join(f"{confusion[(truth, got)]:>7}" for got in labels)
        for truth in ("human", "machine")
    )
    correct = sum(confusion[(label, label)] for label in ("human", "machine"))
    report = (
        f"\nAMD over {len(items)} items: accuracy {correct / len(items):.1%}\n"
        f"   truth | " + " ".join(f"{label:>7}" for label in labels) + f"\n{table}\n"
        f"beep end found within {max(beep_errors_ms):.0f} ms\n" + "\n".join(misses)
    )
    print(report)
    assert correct / len(items) >= 0.9, report
    assert confusion[("human", "machine")] <= 2, report
    assert max(beep_errors_ms) <= 60, report  # the message starts right after the beep
