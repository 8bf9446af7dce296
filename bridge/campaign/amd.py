"""Answering-machine detection: who picked up an outbound call, from its first seconds of audio.

Sans-I/O: feed the caller's frames (20 ms) with the VAD's speech decision for each, and the
recogniser's words as they arrive; events come out. The cadence rules and their defaults are
Asterisk's AMD() (app_amd): a short greeting followed by silence, the person waiting for us to
speak, is a human; a greeting that goes on (more than ``greeting_ms`` of speech, a word longer
than ``max_word_ms``, ``max_words`` words) is a recording. On top, as hosted dialers do:

* a beep detector (a steady pure tone of 400-2000 Hz lasting ``beep_min_ms``): a beep means a
  machine, and "beep heard" is an event of its own so a dialplan can speak after it;
* the recogniser's words: a voicemail phrase ("leave a message", "not available", ...) or
  ``max_recognised_words`` words (jambonz's thresholdWordCount, 9) mean a machine.

Silence all through ``initial_silence_ms`` gives "unknown" (Twilio's answer; Asterisk says
machine): someone who picks up and says nothing is not a recording. No verdict within
``timeout_s`` gives "unknown" too. With ``wait_for_beep`` a machine verdict is followed by
waiting for the beep (or ``greeting_end_silence_ms`` of silence, or ``beep_timeout_s``) before
:class:`Finished`, the moment a dialplan should leave its message.

Times are milliseconds of audio fed since the detector started, so the result depends only on
the audio, never on the clock or on how the transport chops it into frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from bridge.media.frame import AudioFrame

AmdResult = Literal["human", "machine", "unknown"]

PHRASES = (
    "leave a message",
    "leave your message",
    "leave me a message",
    "leave your name",
    "not available",
    "unavailable",
    "after the tone",
    "after the beep",
    "at the tone",
    "record your message",
    "voicemail",
    "voice mail",
    "can't take your call",
    "cannot take your call",
    "can't come to the phone",
    "you have reached",
    "you've reached",
    "get back to you",
    "call you back",
)


@dataclass
class AmdSettings:
    """Thresholds (Asterisk's amd.conf names and defaults, where it has them)."""

    timeout_s: float = 5.0  # total analysis time without a verdict: unknown
    initial_silence_ms: int = 2500  # silence before any speech: unknown
    greeting_ms: int = 1500  # speech in the greeting beyond this: machine
    after_greeting_silence_ms: int = 800  # silence after a greeting shorter than that: human
    min_word_ms: int = 100  # shorter speech is noise
    between_words_silence_ms: int = 50  # silence that ends a word
    max_words: int = 4  # this many words: machine (Asterisk's 2-3 count energy bursts)
    max_word_ms: int = 5000  # one word this long: machine
    max_recognised_words: int = 9  # recognised words: machine (jambonz thresholdWordCount)
    phrases: list[str] = field(default_factory=lambda: list(PHRASES))
    beep_min_ms: int = 150
    beep_low_hz: float = 400.0
    beep_high_hz: float = 2000.0
    beep_purity: float = 0.8  # share of a frame's energy in its strongest tone
    beep_min_dbfs: float = -45.0
    wait_for_beep: bool = False  # after a machine verdict, finish only at the beep
    beep_timeout_s: float = 20.0  # from the start; give up waiting for a beep (jambonz: 20 s)
    greeting_end_silence_ms: int = 3000  # silence ending a machine greeting that has no beep

    def validate(self) -> str | None:
        """A precise complaint about impossible values (typedyaml reports it with the line)."""
        positive = (
            "timeout_s",
            "initial_silence_ms",
            "greeting_ms",
            "after_greeting_silence_ms",
            "min_word_ms",
            "max_words",
            "max_word_ms",
            "max_recognised_words",
            "beep_min_ms",
            "beep_timeout_s",
            "greeting_end_silence_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                return f"{name}: must be positive"
        if not 0 < self.beep_low_hz < self.beep_high_hz <= 4000:
            return "beep_low_hz, beep_high_hz: need 0 < low < high <= 4000"
        if not 0 < self.beep_purity <= 1:
            return "beep_purity: must be in (0, 1]"
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    result: AmdResult
    cause: str  # short-greeting, long-greeting, max-words, long-word, phrase, words, beep, ...
    at_ms: int


@dataclass(frozen=True, slots=True)
class BeepHeard:
    start_ms: int
    end_ms: int
    frequency_hz: float


@dataclass(frozen=True, slots=True)
class Finished:
    """Detection is over: act now (with ``wait_for_beep``, the greeting has ended)."""

    verdict: Verdict
    beep: BeepHeard | None
    at_ms: int


AmdEvent = Verdict | BeepHeard | Finished


def tone_of(samples: np.ndarray, rate: int, settings: AmdSettings) -> float | None:
    """The frequency of the pure tone filling ``samples``, or None (speech, noise, silence)."""
    x = samples.astype(np.float32)
    if len(x) < 32 or np.dot(x, x) / len(x) < (32768 * 10 ** (settings.beep_min_dbfs / 20)) ** 2:
        return None
    z = np.fft.rfft(x * _hann(len(x)))
    spectrum = z.real**2 + z.imag**2
    peak = 2 + int(np.argmax(spectrum[2:-2]))  # the strongest component, away from DC
    hz = peak * rate / len(x)
    if not settings.beep_low_hz <= hz <= settings.beep_high_hz:
        return None
    # A Hann window spreads a pure tone over its main lobe, two bins either side of the peak.
    if spectrum[peak - 2 : peak + 3].sum() < settings.beep_purity * spectrum.sum():
        return None
    return hz


@lru_cache(maxsize=8)
def _hann(size: int) -> np.ndarray:
    return np.hanning(size).astype(np.float32)


class AnsweringMachineDetector:
    """One call's detector. ``feed`` every caller frame, ``hear`` every final recognition."""

    def __init__(self, settings: AmdSettings | None = None) -> None:
        self.settings = settings or AmdSettings()
        self.verdict: Verdict | None = None
        self.beep: BeepHeard | None = None
        self.finished = False
        self._ms = 0.0  # audio fed so far
        self._heard: list[str] = []
        self._phrases = [" ".join(_words(phrase)) for phrase in self.settings.phrases]
        # Cadence.
        self._greeting = False  # a word has been heard
        self._in_word = False
        self._voice_run = 0.0
        self._voice_total = 0.0
        self._silence = 0.0
        self._words = 0
        # The tone run being timed: start, last frequency.
        self._tone_start: float | None = None
        self._tone_hz = 0.0

    def feed(self, frame: AudioFrame, speech: bool) -> list[AmdEvent]:
        """One frame of caller audio and whether the VAD calls it speech."""
        if self.finished:
            return []
        start, length = self._ms, frame.num_samples * 1000 / frame.sample_rate
        self._ms += length
        events: list[AmdEvent] = []
        hz = tone_of(frame.samples, frame.sample_rate, self.settings)
        beep = self._track_tone(start, hz, frame.sample_rate / max(frame.num_samples, 1))
        if beep is not None:
            self.beep = beep
            events.append(beep)
        decided = self._cadence(length, speech and hz is None)
        if self.verdict is None:
            if decided is None and beep is not None:
                decided = ("machine", "beep")
            if decided is None and self._ms >= self.settings.timeout_s * 1000:
                decided = ("unknown", "timeout")
            if decided is not None:
                events.append(self._decide(*decided))
        return self._finish(events)

    def hear(self, text: str) -> list[AmdEvent]:
        """A final recognition of the caller's speech."""
        if self.verdict is not None or self.finished:
            return []
        self._heard.append(text)
        words = _words(" ".join(self._heard))
        joined = f" {' '.join(words)} "
        events: list[AmdEvent] = []
        if any(f" {phrase} " in joined for phrase in self._phrases):
            events.append(self._decide("machine", "phrase"))
        elif len(words) >= self.settings.max_recognised_words:
            events.append(self._decide("machine", "words"))
        return self._finish(events)

    def _decide(self, result: AmdResult, cause: str) -> Verdict:
        self.verdict = Verdict(result, cause, round(self._ms))
        return self.verdict

    def _finish(self, events: list[AmdEvent]) -> list[AmdEvent]:
        verdict, s = self.verdict, self.settings
        if verdict is None or self.finished:
            return events
        waiting = verdict.result == "machine" and s.wait_for_beep and self.beep is None
        if (
            waiting
            and self._silence < s.greeting_end_silence_ms
            and self._ms < s.beep_timeout_s * 1000
        ):
            return events
        self.finished = True
        events.append(Finished(verdict, self.beep, round(self._ms)))
        return events

    def _track_tone(self, start: float, hz: float | None, bin_hz: float) -> BeepHeard | None:
        """A steady tone's run; reported when it ends, having lasted ``beep_min_ms``."""
        steady = hz is not None and abs(hz - self._tone_hz) <= 2 * bin_hz
        if self._tone_start is not None and steady:
            return None
        beep = None
        if self._tone_start is not None and start - self._tone_start >= self.settings.beep_min_ms:
            beep = BeepHeard(round(self._tone_start), round(start), self._tone_hz)
        self._tone_start = start if hz is not None else None
        self._tone_hz = hz or 0.0
        return beep

    def _cadence(self, ms: float, speech: bool) -> tuple[AmdResult, str] | None:
        """Asterisk's word and silence counting; a verdict it reaches (before any other)."""
        s = self.settings
        if not speech:
            self._silence += ms
            if self._silence >= s.between_words_silence_ms:
                self._in_word, self._voice_run = False, 0.0
            if not self._greeting and self._silence >= s.initial_silence_ms:
                return "unknown", "initial-silence"
            if self._greeting and self._silence >= s.after_greeting_silence_ms:
                return "human", "short-greeting"
            return None
        self._voice_run += ms
        self._voice_total += ms
        if self._voice_run < s.min_word_ms:
            return None  # a blip: neither a word nor the end of a silence
        self._silence = 0.0
        if not self._in_word:
            self._in_word, self._greeting = True, True
            self._words += 1
        if self._voice_run >= s.max_word_ms:
            return "machine", "long-word"
        if self._words >= s.max_words:
            return "machine", "max-words"
        if self._voice_total >= s.greeting_ms:
            return "machine", "long-greeting"
        return None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))
