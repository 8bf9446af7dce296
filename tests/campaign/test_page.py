"""The campaign supervisor page in headless Chromium, against a bridge calling sipp far ends:
a supervisor starts the campaign, pauses and resumes it with the page's buttons, and watches the
progress bar, the counts and the contacts table move on their own (no reload) to the end."""

from __future__ import annotations

import asyncio

import pytest

from tests.campaign import running
from tests.campaign.running import CampaignBridge, api, far_end
from tests.peers.chromium import Chromium

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(180)]

calling_bridge = running.calling_bridge


def q(test_id: str) -> str:
    return f"document.querySelector('[data-testid=\"{test_id}\"]')"


def text(test_id: str) -> str:
    return f"{q(test_id)}.textContent"


async def test_supervisor_watches_live_progress(calling_bridge: CampaignBridge, tmp_path) -> None:
    async with (
        far_end(tmp_path, "answer") as people,
        far_end(tmp_path, "busy") as busy,
    ):
        users = [people.uri(u) for u in ("ann", "bob", "cat", "dan")]
        users += [busy.uri(u) for u in ("eve", "fay")]
        status, body = await api(
            "POST",
            f"{calling_bridge.http}/api/campaigns",
            {
                "name": "page test",
                "dialplan": "notify",
                "contacts": [{"to": uri, "name": uri[4:7]} for uri in users],
                "rules": {"max_concurrent": 1, "calls_per_second": 2, "retry_delays_s": {}},
            },
        )
        assert status == 201, body
        cid = body["campaign"]["id"]

        async with Chromium() as browser:
            page = await browser.new_page(f"{calling_bridge.http}/campaigns/{cid}")
            await page.wait_for(f"{text('campaign-state')} === 'draft'")
            assert await page.evaluate(f"{q('campaign-item')}.dataset.id") == cid
            assert await page.evaluate(f"{q('pause')}.disabled") is True
            assert await page.evaluate(f"{q('progress')}.dataset.total") == "6"
            await page.evaluate("window.notReloaded = true")

            await page.click(q("start"))
            await page.wait_for(f"{text('campaign-state')} === 'running'", timeout=5)
            seen: set[int] = set()
            done = f"Number({q('progress')}.dataset.done)"
            await page.wait_for(f"{done} >= 1", timeout=30)

            await page.click(q("pause"))
            await page.wait_for(f"{text('campaign-state')} === 'paused'", timeout=5)
            assert await page.evaluate(f"{q('resume')}.disabled") is False
            await page.click(q("resume"))
            await page.wait_for(f"{text('campaign-state')} === 'running'", timeout=5)

            for _ in range(600):  # what the page shows, sampled until the campaign ends
                seen.add(await page.evaluate(done))
                if await page.evaluate(f"{text('campaign-state')} === 'completed'"):
                    break
                await asyncio.sleep(0.1)
            assert await page.evaluate(text("campaign-state")) == "completed"
            assert await page.evaluate("window.notReloaded") is True
            assert len(seen - {0, 6}) >= 2, seen  # it moved while watched, step by step

            await page.wait_for(f"{done} === 6")
            assert await page.evaluate(text("count-answered")) == "4"
            assert await page.evaluate(text("count-busy")) == "2"
            assert await page.evaluate(text("count-pending")) == "0"
            assert "6 / 6 (100%)" in await page.evaluate(text("progress"))
            for action in ("start", "pause", "resume", "stop"):
                assert await page.evaluate(f"{q(action)}.disabled") is True, action

            rows = await page.evaluate(
                "[...document.querySelectorAll('[data-testid=\"contact-row\"]')].map(r => "
                "({status: r.dataset.status, cells: [...r.cells].map(c => c.textContent),"
                " links: [...r.querySelectorAll('a')].map(a => a.href)}))"
            )
            assert [r["status"] for r in rows] == ["done"] * 6
            assert [r["cells"][4] for r in rows] == ["answered"] * 4 + ["busy"] * 2
            assert [r["cells"][5] for r in rows] == ["200"] * 4 + ["486"] * 2
            assert all(len(r["links"]) == 2 for r in rows[:4]) and rows[4]["links"] == []
            record = await page.evaluate(f"fetch({rows[0]['links'][0]!r}).then(r => r.json())")
            assert record["dialplan"] == "notify" and record["call_id"]
            assert page.exceptions == [], browser.diagnostics()
