"""SIP calls in media worker processes (``sip.media_workers``), with sipp on loopback.

One test has its worker load the configured (embedded) engines, as ``bridge serve`` does, and
reads back what the worker recognised; the others test the process plumbing on fake engines,
which a worker loads in a moment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from bridge.config import Config
from bridge.sip.media_workers import EngineFactory, MediaWorkers
from bridge.speech.factory import SpeechEngines
from tests.emulator.fakes import FixedASR, ToneTTS
from tests.sip.calls import (
    caller_scenario,
    caller_text,
    g711_file,
    in_dialog,
    pause,
    reply,
    rtp_stream,
    start_callee,
    summary,
    transcript,
    wait_for_records,
)
from tests.sip.conftest import SipBridge, StartBridge
from tests.sip.sipp import finish, start_sipp

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(180)]

QUESTION = "What are your opening hours?"
GOODBYE = "That's all, thank you. Goodbye."
INFO_DTMF = in_dialog(
    "INFO", 2, "Signal=5\n      Duration=160", "Content-Type: application/dtmf-relay"
)
WAITS_FOR_OUR_BYE = ['  <recv request="BYE"/>', reply("200 OK")]


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def fake_engines(config: Config) -> SpeechEngines:
    """A recogniser hearing the question in any loud audio, and tone speech."""
    return SpeechEngines(asr=FixedASR(QUESTION), tts=ToneTTS())


async def hears_goodbye(config: Config) -> SpeechEngines:
    """As :func:`fake_engines`, hearing a farewell (the dialplan then hangs up)."""
    return SpeechEngines(asr=FixedASR(GOODBYE), tts=ToneTTS())


async def with_workers(
    sip_bridge: StartBridge,
    count: int,
    make_engines: EngineFactory | None = fake_engines,
    **sip: object,
) -> tuple[SipBridge, MediaWorkers]:
    running = await sip_bridge(make_engines=make_engines, media_workers=count, **sip)
    workers = running.front.host
    assert isinstance(workers, MediaWorkers)
    await until(lambda: workers.ready_workers == count, 90, "media workers ready")
    return running, workers


def calls_per_worker(workers: MediaWorkers) -> list[object]:
    return [worker["calls"] for worker in workers.status()]


async def test_worker_recognises_and_answers_with_the_embedded_engines(
    sip_bridge: StartBridge, speak, tmp_path: Path
) -> None:
    running, _ = await with_workers(sip_bridge, 1, make_engines=None)
    audio = g711_file(tmp_path / "question.raw", speak(QUESTION, 8000), "PCMA")
    scenario = caller_scenario(
        tmp_path / "caller.xml", rtp_stream(audio, 8), pause(7000), codec="PCMA"
    )
    sipp = await start_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    result = await finish(sipp)
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    assert "opening hours" in caller_text(folder).lower(), caller_text(folder)
    answers = [x["text"] for x in transcript(folder) if x["who"] == "bot"]
    assert any("open" in str(text).lower() for text in answers[1:]), answers


async def test_callers_spread_over_workers_are_heard_and_recorded(
    sip_bridge: StartBridge, speak, tmp_path: Path
) -> None:
    running, workers = await with_workers(sip_bridge, 2)
    audio = g711_file(tmp_path / "question.raw", speak(QUESTION, 8000), "PCMU")
    scenario = caller_scenario(
        tmp_path / "caller.xml", rtp_stream(audio, 0), pause(6000), INFO_DTMF, pause(1000)
    )
    sipp = await start_sipp(
        "-sf", str(scenario), "-s", "bot", "-m", "2", "-l", "2", "-r", "10",
        f"127.0.0.1:{running.port}",
    )  # fmt: skip
    # Both calls up at once, one in each worker, and counted toward the bridge's capacity.
    await until(lambda: calls_per_worker(workers) == [1, 1], 30, "a call in each worker")
    assert running.bridge.worker_calls == 2 and running.bridge.calls == {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{running.http}/api/sip/media-workers") as response,
    ):
        listed = (await response.json())["media_workers"]
    assert [(w["ready"], w["calls"]) for w in listed] == [(True, 1), (True, 1)], listed
    result = await finish(sipp)
    assert result.returncode == 0, result.output

    folders = await wait_for_records(running.records, 2)
    for folder in folders:
        assert "opening hours" in caller_text(folder).lower(), caller_text(folder)
        assert [x["dtmf"] for x in transcript(folder) if "dtmf" in x] == ["5"]
        bot = [x for x in transcript(folder) if x["who"] == "bot"]
        assert len(bot) >= 2, bot  # the greeting, then the answer to the question
        meta = summary(folder)
        assert meta["end_reason"] == "remote-hangup"
        assert meta["metrics"]["rtp"]["sent"] > 100  # type: ignore[index]
    await until(lambda: running.bridge.worker_calls == 0, 10, "calls forgotten")
    assert calls_per_worker(workers) == [0, 0]


async def test_outbound_call_runs_in_a_worker(
    sip_bridge: StartBridge, speak, tmp_path: Path
) -> None:
    running, _ = await with_workers(
        sip_bridge, 1, hears_goodbye, outbound_targets=["sip:*@127.0.0.1"]
    )
    goodbye = g711_file(tmp_path / "bye.raw", speak(GOODBYE, 8000), "PCMU")
    sipp, port = await start_callee(tmp_path / "callee.xml", rtp_stream(goodbye, 0))
    out = running.front.dial(
        f"sip:callee@127.0.0.1:{port}", dialplan="customer-service", variables={"name": "Ann"}
    )
    await asyncio.wait_for(out.finished(), 60)
    assert out.status == "completed" and out.sip_status == 200, out
    assert out.duration_s is not None and out.duration_s > 0
    assert isinstance(out.collected, dict)
    result = await finish(sipp)
    assert result.returncode == 0, result.output  # sipp got our BYE
    (folder,) = await wait_for_records(running.records)
    assert folder.name.endswith(str(out.record_id))
    assert summary(folder)["end_reason"] not in ("remote-hangup", "no-media", "error")
    assert caller_text(folder) == GOODBYE  # the worker's recogniser, the fake one here


async def test_lost_worker_hangs_up_its_calls_and_is_replaced(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running, workers = await with_workers(sip_bridge, 1)
    waits = caller_scenario(tmp_path / "waits.xml", *WAITS_FOR_OUR_BYE, hangs_up=False)
    sipp = await start_sipp("-sf", str(waits), "-s", "bot", f"127.0.0.1:{running.port}")
    await until(lambda: calls_per_worker(workers) == [1], 30, "the call in the worker")
    (pid,) = [worker["pid"] for worker in workers.status()]
    os.kill(int(pid), signal.SIGKILL)  # type: ignore[call-overload]
    result = await finish(sipp)
    assert result.returncode == 0, result.output  # the caller got a BYE
    assert running.bridge.worker_calls == 0

    # A new worker takes over, and takes calls.
    await until(lambda: workers.ready_workers == 1, 90, "a new media worker")
    assert [worker["pid"] for worker in workers.status()] != [pid]
    scenario = caller_scenario(tmp_path / "after.xml", pause(2000))
    sipp = await start_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    result = await finish(sipp)
    assert result.returncode == 0, result.output
    records = await wait_for_records(running.records, 2)
    reasons = sorted(str(summary(folder)["end_reason"]) for folder in records)
    assert reasons == ["media-worker-lost", "remote-hangup"], reasons
