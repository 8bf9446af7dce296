"""Kill -9 mid-campaign and restart: every contact ends with the right number of attempts and
no attempt is dialled twice (INVITEs counted at the far end)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from bridge.campaign.model import Campaign, CampaignRules, Contact
from bridge.campaign.store import SqliteStore
from bridge.speech.factory import SpeechEngines
from tests.campaign import farend
from tests.campaign.uas import HERE, FarEnd, start_far_end, stop_far_ends
from tests.conftest import REPO
from tests.sip.calls import callee_scenario, rtp_stream
from tests.sip.sipp import free_port

CONTACTS = 10


def write_config(tmp_path: Path, http_port: int, sip_port: int) -> Path:
    rtp = free_port() & ~1
    config = {
        "http": {"host": "127.0.0.1", "port": http_port},
        "records": {"dir": str(tmp_path / "records")},
        "dialog": {
            "dialplans_dir": str(HERE / "dialplans"),
            "default_dialplan": "campaign-test",
            "reload_interval_s": 0,
        },
        "sip": {
            "host": "127.0.0.1",
            "port": sip_port,
            "transports": ["udp"],
            "rtp_ports": f"{rtp}-{rtp + 60}",
            "outbound_targets": ["sip:*@127.0.0.1"],
        },
        "campaigns": {"dir": str(tmp_path / "campaigns"), "poll_s": 0.2, "ring_timeout_s": 5},
    }
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def serve(config: Path, log: Path, http_port: int) -> asyncio.subprocess.Process:
    """``bridge serve`` in its own process, once its /healthz is green."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "serve", "--config", str(config),
        cwd=REPO, stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.returncode is None, log.read_text()[-3000:]
            try:
                async with session.get(f"http://127.0.0.1:{http_port}/healthz") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"bridge not ready: {log.read_text()[-3000:]}")


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answered_calls_up(far: FarEnd) -> int:
    return sum(1 for _, end in far.call_spans() if end == float("inf"))


@pytest.mark.peer
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_mid_campaign_then_restart(
    speech_engines: SpeechEngines, tmp_path: Path
) -> None:
    synth = farend.Synthesiser(speech_engines.tts._runtime.piper())  # type: ignore[attr-defined]
    person = farend.write(
        tmp_path / "person.raw", farend.human("Hello?", synth, np.random.default_rng(7))
    )
    far = await start_far_end(
        "person", callee_scenario(tmp_path / "person.xml", rtp_stream(person, 0)), tmp_path
    )
    http_port, sip_port = free_port(), free_port()
    config = write_config(tmp_path, http_port, sip_port)
    log = tmp_path / "bridge.log"

    # The campaign is already running when the bridge starts: it resumes running campaigns.
    store = await SqliteStore.open(tmp_path / "campaigns")
    rules = CampaignRules(
        max_concurrent=3,
        calls_per_second=2,
        retry_delays_s={"interrupted": 0.5, "failed": 0.5},
        max_attempts=3,
    )
    contacts = [
        Contact(0, "", i + 2, far.uri(f"p{i}"), "UTC", {"name": f"P{i}"}) for i in range(CONTACTS)
    ]
    await store.create(
        Campaign("crash", "crash", "campaign-test", "bridge", rules, "running", time.time()),
        contacts,
        time.time(),
    )
    bridge = None
    try:
        bridge = await serve(config, log, http_port)

        async def calls_up() -> bool:  # kill while calls are up and others are done
            return answered_calls_up(far) >= 2 and len(far.invites()) >= 4

        await until(calls_up, 90, "calls in progress")
        bridge.send_signal(signal.SIGKILL)
        await bridge.wait()
        killed_with = (await store.counts("crash"))["in-progress"]
        assert killed_with >= 2  # attempts in flight when it died

        bridge = await serve(config, log, http_port)

        async def completed() -> bool:
            campaign = await store.get("crash")
            return campaign is not None and campaign.state == "completed"

        await until(completed, 150, "the campaign to complete after the restart")
    finally:
        if bridge is not None and bridge.returncode is None:
            bridge.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(bridge.wait(), 20)
            except TimeoutError:
                bridge.kill()
                await bridge.wait()
        await stop_far_ends([far])

    rows = await store.contacts("crash")
    await store.close()
    invites: dict[str, int] = {}
    for message in far.invites():
        invites[message.user] = invites.get(message.user, 0) + 1
    interrupted = 0
    for contact, status, _, attempts in rows:
        user = contact.to.split(":")[1].split("@")[0]
        outcomes = [a.outcome for a in attempts]
        assert status == "done" and outcomes[-1] == "answered", (user, outcomes)
        assert set(outcomes[:-1]) <= {"interrupted"}, (user, outcomes)
        assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))
        # every attempt that ran to its end was one INVITE; an interrupted one may have died
        # before or after its INVITE, but no attempt was ever dialled twice
        finished = len(attempts) - outcomes.count("interrupted")
        assert finished <= invites.get(user, 0) <= len(attempts), (user, outcomes, invites)
        interrupted += outcomes.count("interrupted")
    assert interrupted == killed_with
    assert sum(invites.values()) <= sum(len(a) for *_, a in rows)
    assert "Traceback" not in log.read_text()
