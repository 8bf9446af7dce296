"""The official ``dashscope`` SDK (synchronous, so run in threads) against the emulator."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import dashscope
import numpy as np
import pytest
from dashscope.audio.asr import Recognition, RecognitionCallback, RecognitionResult
from dashscope.audio.tts_v2 import AudioFormat, ResultCallback, SpeechSynthesizer

from bridge.emulator.audio import convert
from bridge.emulator.server import Emulator
from tests.emulator.engines import real_engines, speech, transcribe, words
from tests.emulator.fakes import FixedASR, ToneTTS

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
KEY = "sk-conformance"
PHRASE = "Please call me back tomorrow morning."


@pytest.fixture
async def emu(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Emulator]:
    asr, tts = real_engines()
    async with Emulator(asr, tts, api_key=KEY) as emulator:
        monkeypatch.setattr(dashscope, "api_key", KEY)
        monkeypatch.setattr(dashscope, "base_websocket_api_url", emulator.inference_url)
        yield emulator


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data[: len(data) // 2 * 2], np.int16)


async def test_sdk_call_speaks_the_text(emu: Emulator) -> None:
    def call() -> bytes:
        synth = SpeechSynthesizer(
            model="cosyvoice-v3-flash",
            voice="longanyang",
            format=AudioFormat.PCM_16000HZ_MONO_16BIT,
        )
        return synth.call(PHRASE, timeout_millis=60000)

    audio = await asyncio.to_thread(call)
    heard = await transcribe(emu.asr, pcm(audio), 16000)
    assert words(heard) == words(PHRASE)


async def test_sdk_streaming_call_speaks_the_text(emu: Emulator) -> None:
    class Collect(ResultCallback):
        def __init__(self) -> None:
            self.audio = bytearray()
            self.events: list[str] = []

        def on_data(self, data: bytes) -> None:
            self.audio += data

        def on_event(self, message: str) -> None:
            self.events.append(message)

    collect = Collect()

    def stream() -> None:
        synth = SpeechSynthesizer(
            model="cosyvoice-v3-flash",
            voice="longanyang",
            format=AudioFormat.WAV_24000HZ_MONO_16BIT,
            callback=collect,
        )
        for piece in ["Please call ", "me back ", "tomorrow morning."]:
            synth.streaming_call(piece)
        synth.streaming_complete(60000)

    await asyncio.to_thread(stream)
    with wave.open(io.BytesIO(bytes(collect.audio))) as wav:
        assert wav.getframerate() == 24000
    audio = pcm(bytes(collect.audio)[44:])
    heard = await transcribe(emu.asr, audio, 24000)
    assert words(heard) == words(PHRASE)
    assert any("sentence-end" in e for e in collect.events)


async def wav_file(tmp_path: Path, emu: Emulator, text: str) -> Path:
    samples, rate = await speech(emu.tts, text)
    samples = np.concatenate([convert(samples, rate, 16000), np.zeros(8000, np.int16)])
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(samples.tobytes())
    return path


async def test_sdk_recognition_streams_a_wav(emu: Emulator, tmp_path: Path) -> None:
    path = await wav_file(tmp_path, emu, PHRASE)

    class Collect(RecognitionCallback):
        def __init__(self) -> None:
            self.finals: list[dict] = []
            self.complete = False

        def on_event(self, result: RecognitionResult) -> None:
            sentence = result.get_sentence()
            if RecognitionResult.is_sentence_end(sentence):
                self.finals.append(sentence)

        def on_complete(self) -> None:
            self.complete = True

    collect = Collect()

    def stream() -> None:
        rec = Recognition("fun-asr-realtime", collect, "pcm", 16000)
        rec.start()
        with wave.open(str(path)) as wav:
            while data := wav.readframes(1600):
                rec.send_audio_frame(data)
        rec.stop()

    await asyncio.to_thread(stream)
    assert collect.complete
    assert words(" ".join(s["text"] for s in collect.finals)) == words(PHRASE)
    assert all(s["sentence_end"] and isinstance(s["end_time"], int) for s in collect.finals)


async def test_sdk_recognition_call_with_wav_file(emu: Emulator, tmp_path: Path) -> None:
    path = await wav_file(tmp_path, emu, PHRASE)

    def call() -> RecognitionResult:
        return Recognition("paraformer-realtime-v2", None, "wav", 16000).call(str(path))

    result = await asyncio.to_thread(call)
    assert result.status_code == 200, result.message
    sentences = result.get_sentence()
    assert words(" ".join(s["text"] for s in sentences)) == words(PHRASE)


async def test_sdk_sees_401_for_a_wrong_key(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope, "api_key", "sk-wrong")

    def call() -> RecognitionResult:
        return Recognition("fun-asr-realtime", None, "pcm", 16000).call(__file__)

    result = await asyncio.to_thread(call)
    assert result.status_code == 401
    assert "api-key" in result.message


async def test_fakes_still_work_with_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Emulator(FixedASR(), ToneTTS(), api_key=KEY) as emulator:
        monkeypatch.setattr(dashscope, "api_key", KEY)
        synth = SpeechSynthesizer(
            model="cosyvoice-v2",
            voice="longxiaochun_v2",
            format=AudioFormat.PCM_8000HZ_MONO_16BIT,
            url=emulator.inference_url + "/",
        )
        audio = await asyncio.to_thread(synth.call, "One two.")
        assert len(audio) == 2 * 8000 * 20 * (4 + 5) // 1000


@pytest.mark.parametrize("mode", ["server_commit", "commit"])
async def test_sdk_qwen_tts_realtime(emu: Emulator, mode: str) -> None:
    from dashscope.audio.qwen_tts_realtime import QwenTtsRealtime, QwenTtsRealtimeCallback

    class Collect(QwenTtsRealtimeCallback):
        def __init__(self) -> None:
            self.audio = bytearray()
            self.types: list[str] = []
            self.done = threading.Event()

        def on_event(self, message: dict) -> None:
            self.types.append(message["type"])
            if message["type"] == "response.audio.delta":
                self.audio += base64.b64decode(message["delta"])
            if message["type"] == "session.finished":
                self.done.set()

    collect = Collect()

    def run() -> None:
        client = QwenTtsRealtime("qwen3-tts-flash-realtime", callback=collect, url=emu.realtime_url)
        client.connect()
        client.update_session(voice="Cherry", mode=mode, language_type="English")
        for piece in ["Please call ", "me back ", "tomorrow morning."]:
            client.append_text(piece)
        if mode == "commit":
            client.commit()
        client.finish()
        assert collect.done.wait(60)
        client.close()

    await asyncio.to_thread(run)
    assert collect.types[0] == "session.created"
    assert "session.updated" in collect.types and collect.types[-1] == "session.finished"
    assert collect.types.index("response.audio.done") < collect.types.index("response.done")
    heard = await transcribe(emu.asr, pcm(bytes(collect.audio)), 24000)
    assert words(heard) == words(PHRASE)


@pytest.mark.parametrize("vad", [True, False])
async def test_sdk_omni_conversation_hears_and_answers(emu: Emulator, vad: bool) -> None:
    from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback
    from dashscope.audio.qwen_omni.omni_realtime import OmniRealtimeConversation

    class Collect(OmniRealtimeCallback):
        def __init__(self) -> None:
            self.events: list[dict] = []
            self.audio = bytearray()
            self.answered = threading.Event()

        def on_event(self, message: dict) -> None:
            self.events.append(message)
            if message["type"] == "response.audio.delta":
                self.audio += base64.b64decode(message["delta"])
            if message["type"] == "response.done":
                self.answered.set()

    samples, rate = await speech(emu.tts, PHRASE)
    caller = convert(samples, rate, 16000)
    caller = np.concatenate([caller, np.zeros(16000 * 3 // 2, np.int16)]).tobytes()
    collect = Collect()

    def run() -> None:
        conversation = OmniRealtimeConversation(
            "qwen3-omni-flash-realtime", collect, url=emu.realtime_url
        )
        conversation.connect()
        conversation.update_session(
            output_modalities=[MultiModality.AUDIO, MultiModality.TEXT],
            voice="Cherry",
            enable_turn_detection=vad,
        )
        for at in range(0, len(caller), 3200):
            conversation.append_audio(base64.b64encode(caller[at : at + 3200]).decode())
        if not vad:
            conversation.commit()
            conversation.create_response()
        assert collect.answered.wait(60)
        conversation.end_session()
        conversation.close()

    await asyncio.to_thread(run)
    types = [e["type"] for e in collect.events]
    assert types[0] == "session.created" and types[-1] == "session.finished"
    (heard,) = [e for e in collect.events if e["type"].endswith("transcription.completed")]
    assert words(heard["transcript"]) == words(PHRASE)
    (done,) = [e for e in collect.events if e["type"] == "response.done"]
    assert done["response"]["status"] == "completed"
    answer = await transcribe(emu.asr, pcm(bytes(collect.audio)), 24000)
    assert words(answer) == words("You said: " + PHRASE)
