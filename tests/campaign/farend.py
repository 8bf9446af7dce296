"""Far ends for campaign tests: what a person or an answering machine says on picking up.

A person answers briefly ("hello?", "yes, hello", "hi, who's this?") and then waits in silence
for the caller; a voicemail greeting is a few long sentences ending in "... after the tone" and a
beep. Each item varies the voice and speed (Piper and espeak-ng), level, background noise, beep
frequency (440-1400 Hz), length and loudness, and the silences around the speech, drawn from a
seeded generator so the set is the same on every run. :func:`write` makes an item a headerless
8 kHz G.711 file for sipp's ``rtp_stream`` (see tests/sip/calls.py), so sipp far ends play them.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bridge.media.g711 import codec_by_name
from bridge.media.resample import Resampler
from tests.peers.availability import require_binary
from tests.sip.calls import g711_file

RATE = 8000

HUMAN_ANSWERS = (
    "Hello?",
    "Yes, hello?",
    "Hi, who's this?",
    "Hello, who is calling?",
    "Yeah, hello.",
    "Hello, Anna speaking.",
    "Good morning.",
    "Hi there.",
    "Speaking.",
    "Hello, this is Mark.",
    "Yes?",
    "Hello, Riverside.",
    "Hello, this is Mark Peterson speaking, who is calling please?",  # long for a person
)

VOICEMAIL_GREETINGS = (
    "Hi, you have reached Sarah. I can't take your call right now, "
    "please leave a message after the tone.",
    "You have reached the voicemail of John Smith. I am not available at the moment. "
    "Please leave your name and number after the beep, and I will get back to you.",
    "Hello, and thanks for calling. Nobody is available to take your call. "
    "Please leave a message after the tone.",
    "The person you are calling is not available. "
    "Please record your message after the tone. When you have finished, just hang up.",
    "Hi, it's Dave. Sorry I missed you. Leave a message and I'll call you back as soon as I can.",
    "Thank you for calling Green Valley Plumbing. Our office is now closed. "
    "Please leave your name, your number and a short message after the tone.",
    "Hello, you've reached the Millers. We can't come to the phone right now, "
    "but if you leave a message we will call you back.",
    "Hi, this is Maria. I'm either on the other line or away from my desk. "
    "Leave me a message and I'll return your call.",
)

Label = Literal["human", "machine"]


@dataclass(frozen=True)
class Item:
    label: Label
    text: str
    voice: str  # engine:voice@speed
    audio: np.ndarray  # 8 kHz int16 from the moment of answer
    beep: tuple[float, float, float] | None  # start_s, end_s, frequency_hz


def espeak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of ``text`` at 8 kHz."""
    binary = require_binary("espeak-ng")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(
            [binary, "-v", voice, "-s", str(speed), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        with wave.open(str(path)) as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    return _to_8k(pcm, rate)


def piper(voice: Any, text: str, length_scale: float) -> np.ndarray:
    """The embedded Piper voice's rendering of ``text`` at 8 kHz, slower or faster. Without
    its sampling noise, so the same text and speed always give the same audio."""
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = voice.synthesize(text, config)
    pcm = np.concatenate([chunk.audio_int16_array for chunk in chunks])
    return _to_8k(pcm, voice.config.sample_rate)


def _to_8k(pcm: np.ndarray, rate: int) -> np.ndarray:
    resampler = Resampler(rate, RATE)
    return np.concatenate([resampler.process(pcm), resampler.flush()]).astype(np.int16)


def tone(hz: float, seconds: float, dbfs: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)  # 5 ms edges, no clicks
    return (32768 * 10 ** (dbfs / 20) * ramp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(RATE * seconds), np.int16)


def _level(speech: np.ndarray, dbfs: float) -> np.ndarray:
    """``speech`` scaled so its RMS is ``dbfs``."""
    rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) or 1.0
    return speech.astype(np.float64) * (32768 * 10 ** (dbfs / 20) / rms)


def _with_noise(audio: np.ndarray, dbfs: float | None, rng: np.random.Generator) -> np.ndarray:
    """Background noise (low-passed white: room and line hiss) under the whole item."""
    out = audio.astype(np.float64)
    if dbfs is not None:
        noise = np.convolve(rng.standard_normal(len(out)), np.ones(4) / 2, mode="same")
        out += noise / np.sqrt(np.mean(noise**2)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(out, -32768, 32767).astype(np.int16)


class Synthesiser:
    """Speech in varied voices: the embedded Piper voice at several speeds, espeak-ng voices."""

    ESPEAK_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m3", "en-gb+f4")

    def __init__(self, piper_voice: Any) -> None:
        self.piper_voice = piper_voice

    def __call__(
        self, text: str, rng: np.random.Generator, piper_share: float
    ) -> tuple[np.ndarray, str]:
        if rng.random() < piper_share:
            scale = float(rng.uniform(0.85, 1.2))
            return piper(self.piper_voice, text, scale), f"piper@{scale:.2f}"
        voice = str(rng.choice(self.ESPEAK_VOICES))
        speed = int(rng.integers(140, 190))
        return espeak(text, voice, speed), f"espeak:{voice}@{speed}"


def human(
    text: str, synth: Synthesiser, rng: np.random.Generator, piper_share: float = 0.5
) -> Item:
    """A person: a pause to bring the phone up, a short answer, then waiting for us."""
    speech, voice = synth(text, rng, piper_share)
    level = float(rng.uniform(-26, -14))
    noise = None if rng.random() < 0.3 else level - float(rng.uniform(20, 35))
    parts = [silence(rng.uniform(0.2, 1.2)), _level(speech, level), silence(rng.uniform(4, 5))]
    audio = _with_noise(np.concatenate(parts), noise, rng)
    return Item("human", text, voice, audio, None)


def voicemail(
    text: str, synth: Synthesiser, rng: np.random.Generator, piper_share: float = 0.1
) -> Item:
    """A machine: the greeting, a short gap, the beep, then the recording's silence."""
    speech, voice = synth(text, rng, piper_share)  # Piper takes seconds for a long greeting
    level = float(rng.uniform(-26, -14))
    noise = None if rng.random() < 0.3 else level - float(rng.uniform(20, 35))
    hz = float(rng.uniform(440, 1400))
    beep_s = float(rng.uniform(0.25, 1.0))
    lead = silence(rng.uniform(0.1, 0.8))
    greeting = _level(speech, level)
    gap = silence(rng.uniform(0.3, 1.2))
    start = (len(lead) + len(greeting) + len(gap)) / RATE
    beep = tone(hz, beep_s, float(rng.uniform(-16, -6)))
    audio = _with_noise(np.concatenate([lead, greeting, gap, beep, silence(1.5)]), noise, rng)
    return Item("machine", text, voice, audio, (start, start + beep_s, hz))


def labelled_set(piper_voice: Any, count: int = 40, seed: int = 6) -> list[Item]:
    """``count`` items, half people and half machines, cycling through the texts."""
    rng = np.random.default_rng(seed)
    synth = Synthesiser(piper_voice)
    items = []
    for index in range(count // 2):
        items.append(human(HUMAN_ANSWERS[index % len(HUMAN_ANSWERS)], synth, rng))
        items.append(voicemail(VOICEMAIL_GREETINGS[index % len(VOICEMAIL_GREETINGS)], synth, rng))
    return items


def typical(label: Label, seed: int = 0) -> Item:
    """A typical person ("Hello?") or voicemail greeting and beep, in espeak-ng voices (fast,
    no model needed): the far ends of whole-call tests."""
    rng = np.random.default_rng(seed)
    synth = Synthesiser(None)
    if label == "human":
        return human(HUMAN_ANSWERS[0], synth, rng, piper_share=0.0)
    return voicemail(VOICEMAIL_GREETINGS[0], synth, rng, piper_share=0.0)


def over_the_line(item: Item, codec: str = "PCMU") -> np.ndarray:
    """The item as the bridge receives it: through G.711."""
    found = codec_by_name(codec)
    assert found is not None
    return found.decode(found.encode(item.audio))


def write(path: Path, item: Item, codec: str = "PCMU", then: np.ndarray | None = None) -> Path:
    """The item as a headerless G.711 file for sipp's ``rtp_stream``; ``then``: 8 kHz audio
    after it (the rest of the call: silence, or what the person says next)."""
    audio = item.audio if then is None else np.concatenate([item.audio, then])
    return g711_file(path, audio, codec, lead_s=0.0)
