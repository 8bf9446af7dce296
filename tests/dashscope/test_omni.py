"""Qwen-Omni realtime through :class:`OmniSession` against the emulator: the caller is heard and
answered in speech, and talking over the answer cuts it and drops what was queued."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.media.frame import AudioFrame
from bridge.speech.dashscope.omni import (
    OUTPUT_RATE,
    AnswerEnded,
    BargeIn,
    Heard,
    OmniEvent,
    OmniParams,
    OmniSession,
)
from bridge.speech.dashscope.realtime_protocol import b64, decode, encode
from bridge.speech.dashscope.settings import DashScopeSettings
from tests.dashscope.conftest import KEY
from tests.emulator.fakes import tone

pytestmark = pytest.mark.timeout(30)


async def say(session: OmniSession, speech_ms: int, silence_ms: int) -> None:
    for _ in range(speech_ms // 20):
        await session.push(tone(16000, 20))
    for _ in range(silence_ms // 20):
        await session.push(AudioFrame.silence(16000, 20))


async def next_of(events: asyncio.Queue[OmniEvent], kind: type) -> OmniEvent:
    while not isinstance(event := await asyncio.wait_for(events.get(), 10), kind):
        pass
    return event


@pytest.mark.parametrize("model", ["qwen3-omni-flash-realtime", "qwen-omni-turbo-realtime"])
async def test_answers_and_is_cut_by_the_caller(
    emulator: Emulator, settings: DashScopeSettings, model: str
) -> None:
    emulator.faults = Faults(rtf=1.0)
    emulator.omni_reply = "Here is a long answer for you to talk over. " * 3
    session = OmniSession(settings, OmniParams(model=model, instructions="Be brief."))
    await session.open()
    events: asyncio.Queue[OmniEvent] = asyncio.Queue()

    async def read() -> None:
        async for event in session.events():
            events.put_nowait(event)

    reader = asyncio.create_task(read())
    try:
        await say(session, 600, 600)
        assert await next_of(events, Heard) == Heard("hello world")
        while session.reader.queued < OUTPUT_RATE // 2:  # half a second of answer queued
            await asyncio.sleep(0.01)
        await say(session, 400, 0)
        cut = await next_of(events, BargeIn)
        assert isinstance(cut, BargeIn) and cut.dropped_s >= 0.5
        ended = await next_of(events, AnswerEnded)
        assert isinstance(ended, AnswerEnded) and ended.status in ("cancelled", "incomplete")
        assert ended.text == emulator.omni_reply.strip()
        assert session.reader.pop() is None
        await session.close()
        await asyncio.wait_for(reader, 10)  # events end with session.finished
    finally:
        reader.cancel()
        await session.aclose()
    assert session.metrics.first_packet_latency is not None


async def test_manual_turns_clear_and_text_only_answers(emulator: Emulator) -> None:
    """Manual mode (no server VAD): clear empties the buffer, commit + response.create answer
    the committed audio, and a text-only session answers without audio."""
    url = f"{emulator.realtime_url}?model=qwen-omni-turbo-realtime"
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:

        async def until(kind: str) -> list[dict]:
            seen = [decode(await asyncio.wait_for(ws.recv(), 10))]
            while seen[-1]["type"] != kind:
                seen.append(decode(await asyncio.wait_for(ws.recv(), 10)))
            return seen

        await until("session.created")
        await ws.send(
            encode("session.update", session={"modalities": ["text"], "turn_detection": None})
        )
        await until("session.updated")
        speech = [b64(tone(16000, 100).to_bytes())] * 6
        for audio in speech:
            await ws.send(encode("input_audio_buffer.append", audio=audio))
        await ws.send(encode("input_audio_buffer.clear"))
        await until("input_audio_buffer.cleared")
        await ws.send(encode("input_audio_buffer.commit"))
        assert (await until("error"))[-1]["error"]["message"] == "input audio buffer is empty"
        for audio in speech:
            await ws.send(encode("input_audio_buffer.append", audio=audio))
        await ws.send(encode("input_audio_buffer.commit"))
        await ws.send(encode("response.create"))
        answer = await until("response.done")
        await ws.send(encode("session.finish"))
        await until("session.finished")
    types = [e["type"] for e in answer]
    (heard,) = [e for e in answer if e["type"].endswith("transcription.completed")]
    assert heard["transcript"] == "hello world"
    assert "response.text.done" in types and "response.audio.delta" not in types
    (text,) = [e for e in answer if e["type"] == "response.text.done"]
    assert text["text"] == "You said: hello world"
    assert answer[-1]["response"]["status"] == "completed"
