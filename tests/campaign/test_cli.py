"""``bridge campaign ...`` (the real command, in its own process) against a running bridge that
calls sipp far ends: create from a CSV, start, watch the progress bar to the end, export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from pathlib import Path

import pytest

from tests.campaign import running
from tests.campaign.running import CampaignBridge, far_end
from tests.campaign.uas import max_overlap
from tests.conftest import REPO

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(180)]

calling_bridge = running.calling_bridge


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "campaign", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def test_create_start_watch_and_export(
    calling_bridge: CampaignBridge, tmp_path: Path
) -> None:
    server = ("--server", calling_bridge.http)
    bad = tmp_path / "bad.csv"
    bad.write_text("to,name\nsip:ann@127.0.0.1:5999,Ann\nfax:123,Bob\n")
    code, out, err = await cli("create", "x", "--csv", str(bad), "--dialplan", "notify", *server)
    assert code == 1 and out == "", (out, err)
    assert f"{bad}:3: " in err and "neither a SIP URI nor a phone number" in err, err

    async with (
        far_end(tmp_path, "answer") as people,
        far_end(tmp_path, "busy") as busy,
    ):
        contacts = tmp_path / "contacts.csv"
        rows = [people.uri(u) for u in ("ann", "bob", "cat")] + [
            busy.uri(u) for u in ("dan", "eve")
        ]
        contacts.write_text("to,name\n" + "".join(f"{uri},{uri[4:7]}\n" for uri in rows))
        code, out, err = await cli(
            "create", "reminders", "--csv", str(contacts), "--dialplan", "notify",
            "--caller-id", "clinic", "--max-concurrent", "2", "--cps", "4",
            "--retry", "busy=1", "--max-attempts", "2", *server,
        )  # fmt: skip
        assert code == 0, err
        assert "created: 5 contacts" in err
        cid = out.strip()

        code, out, err = await cli("start", cid, *server)
        assert code == 0 and "running" in out, (out, err)
        code, watched, err = await cli("status", cid, "--watch", "--interval", "0.3", *server)
        assert code == 0, err

    blocks = watched.strip().split("\n" + cid)
    assert len(blocks) >= 3, watched  # the bar moved while it was watched
    last = blocks[-1]
    assert "completed" in last and f"[{'#' * 30}] 5/5 100%" in last, last
    assert "answered 3" in last and "busy 2" in last and "pending 0" in last, last

    output = tmp_path / "results.csv"
    code, _, err = await cli("export", cid, "--format", "csv", "-o", str(output), *server)
    assert code == 0, err
    table = {r["name"]: r for r in csv.DictReader(io.StringIO(output.read_text()))}
    assert sorted(table) == ["ann", "bob", "cat", "dan", "eve"]
    for name in ("ann", "bob", "cat"):
        assert (table[name]["outcome"], table[name]["attempts"]) == ("answered", "1")
        assert table[name]["record_ids"], table[name]
    for name in ("dan", "eve"):
        row = table[name]
        assert (row["outcome"], row["attempts"], row["last_sip_status"]) == ("busy", "2", "486")

    code, out, err = await cli("export", cid, "--format", "json", *server)
    assert code == 0, err
    exported = json.loads(out)
    assert exported["campaign"]["counts"]["answered"] == 3
    assert all(a["instance"] == "local" for row in exported["contacts"] for a in row["attempt_log"])

    # What the far ends saw: each person called once, each busy line twice, never >2 at once.
    answered, refused = people.invites(), busy.invites()
    assert sorted(m.user for m in answered) == ["ann", "bob", "cat"]
    assert sorted(m.user for m in refused) == ["dan", "dan", "eve", "eve"]
    spans = people.call_spans() + busy.call_spans()
    assert max(end for _, end in spans) < float("inf")  # every call ended
    assert max_overlap(spans) <= 2

    code, _, err = await cli("pause", cid, *server)
    assert code == 1 and "cannot pause a campaign that is completed" in err
    code, out, err = await cli("status", *server)  # every campaign, one block each
    assert code == 0 and out.startswith(f"{cid}  reminders  completed"), (out, err)
    code, _, err = await cli("status", "nosuch", *server)
    assert code == 1 and "no campaign 'nosuch'" in err
