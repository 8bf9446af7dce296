"""Outbound calls: ``bridge dial`` and ``POST /api/calls`` through the bridge to sipp."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REPO
from tests.sip.calls import (
    caller_text,
    g711_file,
    rtp_stream,
    start_callee,
    summary,
    wait_for_records,
)
from tests.sip.conftest import StartBridge
from tests.sip.sipp import SCENARIOS, finish, free_port, start_sipp

ALLOWED = ["sip:*@127.0.0.1"]


async def _status(http: str, call_id: str, final: tuple[str, ...], timeout: float = 20) -> dict:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(timeout * 10)):
            async with session.get(f"{http}/api/calls/{call_id}") as response:
                state = await response.json()
            if state["status"] in final:
                return state
            await asyncio.sleep(0.1)
    raise TimeoutError(state)


async def _post(http: str, body: object) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{http}/api/calls", json=body) as response,
    ):
        return response.status, await response.json()


@pytest.mark.peer
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_dial_cli_call_answered_then_bot_hangs_up(
    sip_bridge: StartBridge, speak, tmp_path: Path
) -> None:
    running = await sip_bridge(outbound_targets=ALLOWED)
    goodbye = g711_file(
        tmp_path / "bye.raw", speak("That's all, thank you. Goodbye.", 8000), "PCMU"
    )
    sipp, port = await start_callee(tmp_path / "callee.xml", rtp_stream(goodbye, 0))
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "dial", f"sip:callee@127.0.0.1:{port}",
        "--dialplan", "customer-service", "--server", running.http, "--wait", "60",
        "--var", "name=Ann Lee", "--var", "tier=gold",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(cli.communicate(), 90)
    states = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    assert cli.returncode == 0, output.decode()
    seen = [s.get("status") for s in states]
    assert "answered" in seen and seen[-1] == "completed", seen
    assert states[-1]["sip_status"] == 200
    assert states[-1]["variables"] == {"name": "Ann Lee", "tier": "gold"}
    assert states[-1]["duration_s"] > 0 and isinstance(states[-1]["collected"], dict)

    result = await finish(sipp)
    assert result.returncode == 0, result.output  # sipp got our BYE
    (folder,) = await wait_for_records(running.records)
    # What the far end said was recognised (Whisper may write "Goodbye" as "bye bye").
    assert "bye" in caller_text(folder).lower()
    assert summary(folder)["end_reason"] not in ("remote-hangup", "no-media", "error")


@pytest.mark.peer
@pytest.mark.timeout(60)
async def test_busy_callee_is_reported(sip_bridge: StartBridge) -> None:
    running = await sip_bridge(outbound_targets=ALLOWED)
    port = free_port()
    sipp = await start_sipp("-sf", str(SCENARIOS / "busy.xml"), "-p", str(port))
    await asyncio.sleep(0.5)
    status, body = await _post(running.http, {"to": f"sip:callee@127.0.0.1:{port}"})
    assert status == 201 and body["status"] == "dialing"
    state = await _status(running.http, body["call_id"], ("busy", "failed", "no-answer"))
    assert state["status"] == "busy" and state["sip_status"] == 486
    assert (await finish(sipp)).returncode == 0


async def test_destination_outside_the_allow_list_is_refused(sip_bridge: StartBridge) -> None:
    running = await sip_bridge(outbound_targets=["sip:*@127.0.0.1:5999"])
    for target in (
        "sip:900123@127.0.0.2",
        "sip:x@127.0.0.1:5070",
        "sip:x@127.0.0.1:5999;maddr=1.2.3.4",
    ):
        status, body = await _post(running.http, {"to": target})
        assert status == 403, (target, body)
    status, _ = await _post(running.http, {"to": "tel:+1555"})
    assert status == 400
    status, _ = await _post(running.http, {"to": "sip:x@127.0.0.1:5999", "dialplan": "nope"})
    assert status == 404
    status, body = await _post(running.http, {"to": "sip:x@127.0.0.1:5999", "variables": [1]})
    assert status == 400 and "variables" in body["error"]
