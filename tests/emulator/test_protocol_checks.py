"""The conformance checks of the protocol reference (§13), one table row each.

Run against the live emulator with raw WebSocket traffic (so the server side is checked) and,
where the check is about clients, against our sans-I/O client code.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.emulator.task_server import Timers
from bridge.speech.dashscope import task_protocol as tp
from bridge.speech.dashscope.asr import sentence_transcript
from bridge.speech.dashscope.errors import ProtocolError, TaskFailedError
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.omni import AnswerEnded, BargeIn, OmniReader
from tests.emulator.conftest import KEY
from tests.emulator.fakes import FixedASR, ToneTTS, tone

pytestmark = pytest.mark.timeout(20)
AUTH = {"Authorization": f"Bearer {KEY}"}
TTS_PARAMS = {"voice": "longanyang", "format": "pcm", "sample_rate": 16000}
ASR_PARAMS = {"format": "pcm", "sample_rate": 16000, "heartbeat": True}


def run_task(task_id: str, kind: str = "tts", **params: Any) -> str:
    if kind == "tts":
        model, function, base = "cosyvoice-v3-flash", "SpeechSynthesizer", TTS_PARAMS
    else:
        model, function, base = "fun-asr-realtime", "recognition", ASR_PARAMS
    parameters = {**base, **params}
    return tp.run_task(
        task_id, model=model, task=kind, function=function, parameters=parameters
    ).encode()


def cont(task_id: str, text: str) -> str:
    return tp.Directive(tp.CONTINUE, task_id, {"input": {"text": text}}).encode()


def finish(task_id: str, **input_: Any) -> str:
    return tp.Directive(tp.FINISH, task_id, {"input": input_}).encode()


async def collect(ws: ClientConnection, until: str = tp.FINISHED) -> list[Any]:
    """Messages (parsed events or bytes) up to and including ``until`` or a failure."""
    out: list[Any] = []
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        out.append(message if isinstance(message, bytes) else json.loads(message))
        if isinstance(message, str) and out[-1]["header"]["event"] in (until, tp.FAILED):
            return out


def events(messages: list[Any]) -> list[dict[str, Any]]:
    return [m for m in messages if isinstance(m, dict)]


async def tts_session(emu: Emulator, text: str = "One two. Three four.", **params: Any):
    ws = await connect(emu.inference_url, additional_headers=AUTH)
    await ws.send(run_task("t1", **params))
    await collect(ws, tp.STARTED)
    await ws.send(cont("t1", text))
    await ws.send(finish("t1"))
    return ws, await collect(ws)


async def asr_session(emu: Emulator, audio: list[bytes]) -> list[Any]:
    async with connect(emu.inference_url, additional_headers=AUTH) as ws:
        await ws.send(run_task("a1", "asr"))
        await collect(ws, tp.STARTED)
        for data in audio:
            await ws.send(data)
        await ws.send(finish("a1"))
        return await collect(ws)


SPEECH = [tone(16000, 100).to_bytes()] * 6 + [bytes(3200)] * 6


async def check_01(emu: Emulator) -> None:
    client = tp.TaskClient()
    payload = json.loads(client.start(model="m", task="tts", function="f", parameters={}))
    assert set(payload["header"]) == {"action", "task_id", "streaming"}
    assert {"task_group", "task", "function", "model", "input"} <= set(payload["payload"])
    assert payload["payload"]["input"] == {}


async def check_02(emu: Emulator) -> None:
    ws, messages = await tts_session(emu)
    await ws.close()
    assert {e["header"]["task_id"] for e in events(messages)} == {"t1"}


async def check_03(emu: Emulator) -> None:
    async with connect(emu.inference_url, additional_headers=AUTH) as ws:
        await ws.send(cont("t1", "early"))
        assert (await collect(ws))[-1]["header"]["event"] == tp.FAILED
    client = tp.TaskClient()
    client.start(model="m", task="tts", function="f", parameters={})
    with pytest.raises(ProtocolError):
        client.continue_task({"text": "too early"})


async def check_04(emu: Emulator) -> None:
    ws, messages = await tts_session(emu)
    await ws.close()
    assert {e["header"]["event"] for e in events(messages)} <= tp.EVENTS
    asr = await asr_session(emu, SPEECH)
    assert {e["header"]["event"] for e in events(asr)} <= tp.EVENTS


async def check_05(emu: Emulator) -> None:
    ws, messages = await tts_session(emu)
    await ws.close()
    assert any(isinstance(m, bytes) for m in messages)
    assert "audio" not in json.dumps(events(messages)).replace("audio/", "")
    async with connect(emu.inference_url, additional_headers=AUTH) as ws:
        await ws.send(bytes(3200))
        assert (await collect(ws))[-1]["header"]["event"] == tp.FAILED


async def check_06(emu: Emulator) -> None:
    ws, messages = await tts_session(emu)
    await ws.close()
    kinds = [
        "bin" if isinstance(m, bytes) else m["payload"].get("output", {}).get("type", "")
        for m in messages[:-1]
    ]
    for i, kind in enumerate(kinds):
        if kind == "sentence-synthesis":
            assert kinds[i + 1] == "bin" and (i + 2 == len(kinds) or kinds[i + 2] != "bin")
    assert kinds[0] == "sentence-begin" and kinds[-1] == "sentence-end"
    assert kinds.count("sentence-begin") == kinds.count("sentence-end") == 2


async def check_07(emu: Emulator) -> None:
    ws, messages = await tts_session(emu)
    assert messages[-1]["header"]["event"] == tp.FINISHED
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)
    await ws.close()


async def check_08(emu: Emulator) -> None:
    async with connect(emu.inference_url, additional_headers=AUTH) as ws:
        await ws.send(run_task("t1"))
        await collect(ws, tp.STARTED)
        await ws.send(cont("t1", "A long sentence to be cut short. " * 20))
        await ws.send(finish("t1", directive="cancel"))
        messages = await collect(ws)
    assert messages[-1]["header"]["event"] == tp.FINISHED
    assert sum(isinstance(m, bytes) for m in messages) < 20


async def check_09(emu: Emulator) -> None:
    emu.faults = Faults(fail_after_frames=2)
    async with connect(emu.inference_url, additional_headers=AUTH) as ws:
        await ws.send(run_task("t1"))
        await collect(ws, tp.STARTED)
        await ws.send(cont("t1", "One two three four five six."))
        await ws.send(finish("t1"))
        header = (await collect(ws))[-1]["header"]
        assert header["event"] == tp.FAILED and header["error_code"] and header["error_message"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    client = tp.TaskClient()
    client.start(model="m", task="tts", function="f", parameters={})
    with pytest.raises(TaskFailedError):
        client.receive(tp.Event(tp.FAILED, client.task_id, {}, {}, "X", "y").encode())
    assert not client.reusable


async def check_10(emu: Emulator) -> None:
    ws, _ = await tts_session(emu)
    await ws.send(run_task("t2"))
    assert (await collect(ws, tp.STARTED))[-1]["header"]["event"] == tp.STARTED
    await ws.send(finish("t2"))
    await collect(ws)
    await ws.send(run_task("t1"))
    assert (await collect(ws))[-1]["header"]["event"] == tp.FAILED
    await ws.close()


async def check_11(emu: Emulator) -> None:
    ws, messages = await tts_session(emu, "One. Two two. Three three three.")
    await ws.close()
    chars = [
        e["payload"]["usage"]["characters"] for e in events(messages) if e["payload"].get("usage")
    ]
    assert chars == sorted(chars) and chars[-1] == len("One.Two two.Three three three.")
    asr = await asr_session(emu, SPEECH)
    durations = [
        e["payload"]["usage"]["duration"] for e in events(asr) if e["payload"].get("usage")
    ]
    assert durations and all(isinstance(d, int) for d in durations)


async def check_12(emu: Emulator) -> None:
    messages = await asr_session(emu, SPEECH)
    sentences = [e["payload"]["output"]["sentence"] for e in events(messages)[1:-1]]
    for s in sentences:
        if s["sentence_end"]:
            assert isinstance(s["end_time"], int)
        else:
            assert s["end_time"] is None
    assert any(s["sentence_end"] for s in sentences)
    beat = tp.Event(
        tp.GENERATED,
        "a1",
        {"output": {"sentence": {"heartbeat": True, "text": "", "sentence_id": 0}}},
    )
    assert sentence_transcript(beat, StreamMetrics(), 0.0) is None


async def check_13(emu: Emulator) -> None:
    messages = await asr_session(emu, SPEECH)
    assert messages[-1]["payload"] == {"output": {}, "usage": None}


async def check_14(emu: Emulator) -> None:
    async with connect(emu.inference_url, additional_headers=AUTH) as ws:
        await ws.send(run_task("t1", enable_ssml=True))
        await collect(ws, tp.STARTED)
        await ws.send(cont("t1", "<speak>One.</speak>"))
        await ws.send(cont("t1", "<speak>Two.</speak>"))
        failed = (await collect(ws))[-1]["header"]
    assert failed["error_message"] == "Text request limit violated, expected 1."


async def check_15(emu: Emulator) -> None:
    timers = Timers(text_gap=0.3, no_audio=0.3, idle=0.3)
    async with Emulator(FixedASR(), ToneTTS(), api_key=KEY, timers=timers) as short:
        async with connect(short.inference_url, additional_headers=AUTH) as ws:
            await ws.send(run_task("t1"))
            await collect(ws, tp.STARTED)
            failed = (await collect(ws))[-1]["header"]
        assert failed["error_message"] == "request timeout after 23 seconds"
        async with connect(short.inference_url, additional_headers=AUTH) as ws:
            await ws.send(run_task("a1", "asr"))
            await collect(ws, tp.STARTED)
            assert (await collect(ws))[-1]["header"]["error_message"] == "Response timeout!"
        async with connect(short.inference_url, additional_headers=AUTH) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)


async def check_16(emu: Emulator) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        with pytest.raises(InvalidStatus) as refused:
            await connect(emu.inference_url, additional_headers=headers)
        assert refused.value.response.status_code == 401
    ws = await connect(emu.inference_url, additional_headers={"Authorization": f"bEaReR {KEY}"})
    await ws.close()


async def realtime(emu: Emulator, model: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(f"{emu.realtime_url}?model={model}", additional_headers=AUTH)
    return ws, json.loads(await ws.recv())


async def send(ws: ClientConnection, type_: str, **fields: Any) -> None:
    await ws.send(json.dumps({"event_id": f"event_{type_}", "type": type_, **fields}))


async def until(ws: ClientConnection, type_: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] != type_:
        message = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(message, str)  # check 20: never binary
        out.append(json.loads(message))
    return out


async def tts_rt(emu: Emulator, mode: str) -> list[dict[str, Any]]:
    ws, created = await realtime(emu, "qwen3-tts-flash-realtime")
    await send(ws, "session.update", session={"voice": "Cherry", "mode": mode})
    await send(ws, "input_text_buffer.append", text="One two. Three four.")
    if mode == "commit":
        await send(ws, "input_text_buffer.commit")
    await send(ws, "session.finish")
    out = [created, *await until(ws, "session.finished")]
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 2)
    return out


async def check_17(emu: Emulator) -> None:
    ws, created = await realtime(emu, "qwen3-asr-flash-realtime")
    await ws.close()
    assert created["type"] == "session.created" and created["session"]["id"]
    assert created["session"]["model"] == "qwen3-asr-flash-realtime"


async def check_18(emu: Emulator) -> None:
    out = await tts_rt(emu, "server_commit")
    ids = [e["event_id"] for e in out]
    assert all(e["type"] for e in out) and len(set(ids)) == len(ids)


async def check_19(emu: Emulator) -> None:
    ws, _ = await realtime(emu, "qwen3-asr-flash-realtime")
    extra = {"modalities": ["text"], "voice": None, "output_audio_format": "pcm16"}
    turn = {"type": "server_vad", "threshold": 0.2, "prefix_padding_ms": 300}
    await send(ws, "session.update", session={**extra, "turn_detection": turn})
    updated = await until(ws, "session.updated")
    assert len(updated) == 1 and updated[0]["session"]["turn_detection"] == turn
    await ws.close()


async def check_20(emu: Emulator) -> None:
    ws, _ = await realtime(emu, "qwen3-tts-flash-realtime")
    await ws.send(b"\x00\x01")
    assert (await until(ws, "error"))[-1]["error"]["type"] == "invalid_request_error"
    await ws.close()


async def check_21(emu: Emulator) -> None:
    for mode in ("server_commit", "commit"):
        out = await tts_rt(emu, mode)
        types = [e["type"] for e in out]
        assert types.count("response.created") == types.count("response.done") >= 1
        current = None
        for e in out:
            if e["type"] == "response.created":
                current = e["response"]["id"]
            elif e["type"] == "response.audio.delta":
                assert e["response_id"] == current
            elif e["type"] == "response.done":
                assert types.index("response.audio.done") < types.index("response.done")
    ws, _ = await realtime(emu, "qwen3-tts-flash-realtime")
    await send(ws, "input_text_buffer.commit")
    assert (await until(ws, "error"))[-1]["error"]["code"]
    await ws.close()


async def check_22(emu: Emulator) -> None:
    for vad in (True, False):
        ws, _ = await realtime(emu, "qwen3-asr-flash-realtime")
        turn = {"type": "server_vad"} if vad else None
        await send(ws, "session.update", session={"turn_detection": turn})
        for data in SPEECH:
            await send(ws, "input_audio_buffer.append", audio=base64.b64encode(data).decode())
        if not vad:
            await send(ws, "input_audio_buffer.commit")
        await send(ws, "session.finish")
        out = await until(ws, "session.finished")
        await ws.close()
        texts = [e for e in out if e["type"].endswith("transcription.text")]
        done = [e for e in out if e["type"].endswith("transcription.completed")]
        assert texts and all({"text", "stash", "item_id"} <= set(e) for e in texts)
        assert len(done) == len({e["item_id"] for e in done}) == 1
        if not vad:
            assert "input_audio_buffer.committed" in [e["type"] for e in out]


async def check_23(emu: Emulator) -> None:
    out = await tts_rt(emu, "commit")
    assert out[-1]["type"] == "session.finished"
    assert [e["type"] for e in out].index("response.done") < len(out) - 1


async def check_24(emu: Emulator) -> None:
    ws, _ = await realtime(emu, "qwen3-tts-flash-realtime")
    await send(ws, "no.such.event")
    error = (await until(ws, "error"))[-1]["error"]
    assert isinstance(error["code"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    await send(ws, "session.update", session={"voice": "Ethan"})
    assert (await until(ws, "session.updated"))[-1]["session"]["voice"] == "Ethan"
    await ws.close()


async def check_25(emu: Emulator) -> None:
    emu.faults = Faults(rtf=1.0)  # answers are spoken at real time: there is time to cut in
    emu.omni_reply = "A long answer that the caller will not wait for. " * 4
    ws, _ = await realtime(emu, "qwen3-omni-flash-realtime")
    await send(ws, "session.update", session={"turn_detection": {"type": "server_vad"}})
    await until(ws, "session.updated")
    for data in SPEECH:
        await send(ws, "input_audio_buffer.append", audio=base64.b64encode(data).decode())
    answering = await until(ws, "response.audio.delta")
    for data in SPEECH[:6]:  # the caller talks over the answer
        await send(ws, "input_audio_buffer.append", audio=base64.b64encode(data).decode())
    cut = await until(ws, "response.done")
    await ws.close()
    types = [e["type"] for e in cut]
    assert "input_audio_buffer.speech_started" in types
    assert cut[-1]["response"]["status"] in ("cancelled", "incomplete")
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    # The client drops queued playback at speech_started and accepts either status.
    for status in ("cancelled", "incomplete"):
        reader = OmniReader(StreamMetrics())
        notes = []
        for event in answering + cut:
            if event["type"] == "response.done":
                event = {**event, "response": {**event["response"], "status": status}}
            notes += reader.on_event(event, 0.0)
        barge_in, ended = notes[-2:]
        assert isinstance(barge_in, BargeIn) and barge_in.dropped_s > 0
        assert isinstance(ended, AnswerEnded) and ended.status == status
        assert reader.pop() is None  # audio still arriving for the cut answer is not queued
    failed = {"type": "response.done", "response": {"id": "r", "status": "failed"}}
    with pytest.raises(TaskFailedError):
        OmniReader(StreamMetrics()).on_event(failed, 0.0)


CHECKS: list[tuple[int, Callable[[Emulator], Awaitable[None]]]] = [
    (n, globals()[f"check_{n:02d}"]) for n in range(1, 26)
]


@pytest.mark.parametrize(("number", "check"), CHECKS, ids=[f"check-{n}" for n, _ in CHECKS])
async def test_conformance(emulator: Emulator, number: int, check) -> None:
    await check(emulator)
