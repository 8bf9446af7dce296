"""Two ``bridge serve`` processes share one campaign through a real redis-server: the far end
(one sipp serving every contact) sees each contact called once, never more calls at once than
the campaign's global limit, and both instances did part of the work."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.campaign.running import ALLOWED, api, far_end, until, write_dialplans
from tests.campaign.uas import max_overlap
from tests.conftest import REPO
from tests.peers.redis_server import redis_server
from tests.sip.sipp import free_port

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(240)]

CONTACTS = 12
MAX_CONCURRENT = 3

CONFIG = """\
http: {{host: 127.0.0.1, port: {http}}}
records: {{dir: {folder}/records}}
dialog: {{dialplans_dir: {plans}, reload_interval_s: 0}}
sip:
  host: 127.0.0.1
  port: {sip}
  rtp_ports: {rtp}-{rtp_high}
  outbound_targets: {allowed}
campaigns:
  dir: {folder}/campaigns
  redis_url: {redis}
  instance: {name}
  poll_s: 0.2
  ring_timeout_s: 10
"""


@contextlib.asynccontextmanager
async def bridge_process(
    tmp_path: Path, name: str, redis_url: str, plans: Path
) -> AsyncIterator[tuple[str, Callable[[], Awaitable[bool]]]]:
    """``bridge serve`` as its own process: its HTTP URL, and whether /healthz is green."""
    folder = tmp_path / name
    folder.mkdir()
    http, rtp = free_port(), free_port() & ~1
    config = folder / "config.yaml"
    settings = {"http": http, "folder": folder, "plans": plans, "sip": free_port(), "rtp": rtp}
    config.write_text(
        CONFIG.format(**settings, rtp_high=rtp + 40, allowed=ALLOWED, redis=redis_url, name=name)
    )
    log = (folder / "bridge.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "serve", "--config", str(config),
        cwd=REPO, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"

    async def healthy() -> bool:
        if process.returncode is not None:
            raise RuntimeError(f"{name} exited: {(folder / 'bridge.log').read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            return (await api("GET", f"{url}/healthz"))[0] == 200
        return False

    try:
        yield url, healthy
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def test_two_instances_share_one_campaign(tmp_path: Path) -> None:
    plans = write_dialplans(tmp_path / "dialplans")
    async with (
        redis_server() as redis_url,
        far_end(tmp_path, "answer") as people,
        bridge_process(tmp_path, "one", redis_url, plans) as (one, one_ready),
        bridge_process(tmp_path, "two", redis_url, plans) as (two, two_ready),
    ):
        await until(one_ready, timeout=120, interval=0.5)  # both load their engines at once
        await until(two_ready, timeout=120, interval=0.5)
        users = [f"c{i:02d}" for i in range(CONTACTS)]
        status, body = await api(
            "POST",
            f"{one}/api/campaigns",
            {
                "name": "shared",
                "dialplan": "notify",
                "contacts": [{"to": people.uri(u), "name": u} for u in users],
                "rules": {"max_concurrent": MAX_CONCURRENT, "calls_per_second": 4},
            },
        )
        assert status == 201, body
        cid = body["campaign"]["id"]
        status, body = await api("POST", f"{two}/api/campaigns/{cid}/start")  # the other one
        assert (status, body["state"]) == (200, "running"), body

        async def completed() -> dict | None:
            _, body = await api("GET", f"{one}/api/campaigns/{cid}")
            return body if body["state"] == "completed" else None

        final = await until(completed, timeout=150, interval=0.5)
        assert isinstance(final, dict)
        assert final["counts"]["answered"] == CONTACTS and final["calls_started"] == CONTACTS
        _, exported = await api("GET", f"{two}/api/campaigns/{cid}/export?format=json")

    attempts = [a for row in exported["contacts"] for a in row["attempt_log"]]
    by_instance = {name: sum(a["instance"] == name for a in attempts) for name in ("one", "two")}
    assert sum(by_instance.values()) == CONTACTS and min(by_instance.values()) >= 1, by_instance

    invites = people.invites()  # what the far end saw, from its own SIP trace
    assert sorted(m.user for m in invites) == users, "a contact was called twice or never"
    spans = people.call_spans()
    assert max(end for _, end in spans) < float("inf")  # every call ended
    peak = max_overlap(spans)
    assert 2 <= peak <= MAX_CONCURRENT, peak
