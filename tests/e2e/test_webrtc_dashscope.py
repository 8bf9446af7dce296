"""Whole WebRTC calls on the DashScope providers, against the emulator (no network beyond
loopback, no real key).

The emulator runs in-process on the session's embedded engines and paces its speech at real
time, as a long answer still being generated would be; its voice is watched so the tests can
see, on the service side, which sentences it synthesised and which it abandoned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.emulator import Emulator, Faults
from bridge.server import Bridge
from bridge.speech.base import TTS, SpeechChunk
from bridge.speech.dashscope import FallbackASR, FallbackTTS
from bridge.speech.dashscope.text import billed_characters
from bridge.speech.factory import SpeechEngines, with_providers
from tests.conftest import loopback_config, running_bridge
from tests.e2e.webrtc_caller import RATE, WebRtcCaller, call_record, is_bot_final

pytestmark = pytest.mark.slow

KEY = "sk-e2e-emulator"
QUESTION = "What are your opening hours?"
LAST_GREETING_SENTENCE = "What can I do for you today?"
PACED = Faults(rtf=1.0)


@dataclass
class Sentence:
    text: str = ""
    finished: bool = False


class WatchedTTS(TTS):
    """The emulator's voice, noting each sentence it is asked for and whether it ran to its end."""

    def __init__(self, inner: TTS) -> None:
        self.inner, self.sample_rate = inner, inner.sample_rate
        self.sentences: list[Sentence] = []

    async def synthesize(
        self, text: AsyncIterable[str], voice: str | None = None
    ) -> AsyncIterator[SpeechChunk]:
        sentence = Sentence()
        self.sentences.append(sentence)

        async def noted() -> AsyncIterator[str]:
            async for piece in text:
                sentence.text += piece
                yield piece

        async for chunk in self.inner.synthesize(noted(), voice):
            yield chunk
        sentence.finished = True


@pytest.fixture
async def emulator(speech_engines: SpeechEngines) -> AsyncIterator[Emulator]:
    voice = WatchedTTS(speech_engines.tts)
    async with Emulator(speech_engines.asr, voice, api_key=KEY, faults=PACED) as emu:
        yield emu


@pytest.fixture
async def dashscope_bridge(
    tmp_path: Path,
    speech_engines: SpeechEngines,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, Bridge]]:
    """A bridge whose ASR and TTS providers are DashScope, pointed at the emulator."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    config = loopback_config(tmp_path)
    config.speech.asr.provider = config.speech.tts.provider = "dashscope"
    config.speech.dashscope.base_url = emulator.base_url
    engines = await with_providers(config.speech, speech_engines)
    assert isinstance(engines.asr, FallbackASR) and isinstance(engines.tts, FallbackTTS)
    try:
        async with running_bridge(config, engines) as served:
            yield served
    finally:
        await engines.tts.primary.aclose()  # type: ignore[attr-defined]
        await engines.asr.primary.aclose()  # type: ignore[attr-defined]


def watched(emulator: Emulator) -> list[Sentence]:
    assert isinstance(emulator.tts, WatchedTTS)
    return emulator.tts.sentences


def is_answer(event: dict[str, object]) -> bool:
    return is_bot_final(event) and "Monday to Friday" in str(event.get("said"))


async def test_greeting_and_answer_through_dashscope(
    dashscope_bridge, emulator, speak, transcribe
) -> None:
    base_url, bridge = dashscope_bridge
    caller = WebRtcCaller(base_url)
    await caller.connect()
    try:
        greeting = await caller.wait_event(is_bot_final, timeout=60)
        await asyncio.sleep(0.5)
        caller.mic.say(speak(QUESTION, RATE))
        answer = await caller.wait_event(is_answer, timeout=60)
        heard = transcribe(caller.received.samples(), RATE).lower()
    finally:
        await caller.close()

    assert greeting["interrupted"] is False and answer["interrupted"] is False
    assert "thank you for calling" in heard
    assert "monday to friday" in heard or "nine in the morning" in heard
    sentences = watched(emulator)  # a follow-up question may be cut by the hang-up
    played = [s for s in sentences if s.text in f"{greeting['said']} {answer['said']}"]
    assert len(played) == 4 and all(s.finished for s in played)
    assert played[2].text == LAST_GREETING_SENTENCE

    _, lines, meta = await call_record(bridge, caller.call_id)
    assert any("hours" in x.get("text", "").lower() for x in lines if x["who"] == "caller")
    speech = meta["metrics"]["speech"]
    tts, asr = speech["tts"], speech["asr"]
    assert tts["streams"] >= 2 and len(tts["first_packet_ms"]) >= 2
    # Greeting and answer; a follow-up's figure would include the test's blocking transcription.
    assert all(0 < ms < 1000 for ms in tts["first_packet_ms"][:2]), tts
    billed = tts["billed_characters"]
    assert sum(billed_characters(s.text) for s in played) <= billed
    assert billed <= sum(billed_characters(s.text) for s in sentences)
    assert tts["tasks"] >= 2 and tts["failures"] == 0 and tts["audio_seconds"] > 5
    assert asr["tasks"] == 1 and asr["failures"] == 0 and asr["billed_audio_seconds"] >= 1
    assert asr["audio_seconds"] > 5 and len(asr["first_packet_ms"]) == 1


async def test_barge_in_cancels_the_cosyvoice_task(
    dashscope_bridge, emulator, speak, transcribe
) -> None:
    base_url, bridge = dashscope_bridge
    caller = WebRtcCaller(base_url)
    await caller.connect()
    try:
        # Well into the greeting's first sentence.
        await caller.say_into_greeting(speak(QUESTION, RATE), after=1.5)
        cut = await caller.wait_event(is_bot_final, timeout=30)
        answer = await caller.wait_event(lambda e: is_answer(e) and e is not cut, timeout=60)
    finally:
        await caller.close()

    assert cut["interrupted"] is True and answer["interrupted"] is False
    said, heard = str(cut["said"]), str(cut["text"])
    assert heard and said.startswith(heard) and len(heard) < len(said) // 2

    # Service side: the greeting's task was abandoned mid-way, its last sentence never voiced,
    # while the answer's task ran to its end.
    sentences = watched(emulator)
    assert not any(s.text == LAST_GREETING_SENTENCE for s in sentences)
    assert not all(s.finished for s in sentences if s.text in said)
    assert any(s.finished and "Monday to Friday" in s.text for s in sentences)

    _, lines, meta = await call_record(bridge, caller.call_id)
    greeting = next(x for x in lines if x["who"] == "bot")
    assert greeting["interrupted"] is True and greeting["heard"] == heard
    assert meta["metrics"]["bot_interruptions"] == 1
    assert meta["metrics"]["speech"]["tts"]["failures"] == 0  # a cancel is not a failure


async def test_service_failure_mid_call_falls_back_and_the_call_goes_on(
    dashscope_bridge, emulator, speak, transcribe
) -> None:
    base_url, bridge = dashscope_bridge
    caller = WebRtcCaller(base_url)
    await caller.connect()
    try:
        await caller.wait_event(is_bot_final, timeout=60)
        greeting_samples = caller.received.samples().size
        # From now on every DashScope task fails (task-failed) at its first audio frame: the
        # open recognition task at once, its retry and both tries of the answer's synthesis.
        emulator.faults = Faults(rtf=1.0, fail_after_frames=1)
        caller.mic.say(speak(QUESTION, RATE))
        await caller.wait_event(is_answer, timeout=60)
    finally:
        await caller.close()

    heard = transcribe(caller.received.samples()[greeting_samples:], RATE).lower()
    assert "monday to friday" in heard or "nine in the morning" in heard
    _, _, meta = await call_record(bridge, caller.call_id)
    speech = meta["metrics"]["speech"]
    assert speech["asr"]["failures"] == 2  # the stream and its retry; then the embedded one
    # The answer and its retry (then the embedded voice); so for any follow-up question.
    assert speech["tts"]["failures"] >= 2
