"""The campaign HTTP API of a real bridge: creation with row-by-row reports, state changes,
results and every refusal with its status and JSON reason. No call is placed here (the bridge
has no speech engines); test_cli.py and test_page.py run campaigns to the end."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import redis.asyncio as redis

from bridge.campaign import api as campaign_api
from tests.campaign import running
from tests.campaign.running import CampaignBridge, api
from tests.peers.redis_server import redis_server

served = running.api_bridge

GOOD = "to,name\nsip:ann@127.0.0.1:5999,Ann\nsip:bob@127.0.0.1:5999,Bob\n"
# Line numbers as in the file: 1 is the header.
BAD_CSV = (
    "to,name,timezone\n"
    "sip:ann@127.0.0.1:5999,Ann,Europe/Paris\n"  # 2 good
    ",Nobody,UTC\n"  # 3 no destination
    "not a uri,Xavier,UTC\n"  # 4 neither URI nor number
    "sip:ann@127.0.0.1:5999,Ann again,UTC\n"  # 5 duplicate of line 2
    "sip:cat@127.0.0.1:5999,Cat,Mars/Olympus\n"  # 6 unknown zone
    "sip:dan@198.51.100.7,Dan,UTC\n"  # 7 outside sip.outbound_targets
    "sip:eve@127.0.0.1:5999,Eve,UTC\n"  # 8 good
)


def spec(**extra: object) -> dict[str, object]:
    return {"name": "reminders", "dialplan": "notify", "caller_id": "clinic", **extra}


async def test_create_reports_every_bad_row_by_line(served: CampaignBridge) -> None:
    status, body = await api("POST", f"{served.http}/api/campaigns", spec(csv=BAD_CSV))
    assert status == 422, body
    lines = {p["line"]: p["reason"] for p in body["problems"]}
    assert sorted(lines) == [3, 4, 5, 6, 7], body
    assert "Mars/Olympus" in lines[6] and "not a uri" in lines[4]
    assert "none imported" in body["error"]
    status, listed = await api("GET", f"{served.http}/api/campaigns")
    assert listed == {"campaigns": []}

    status, body = await api(
        "POST", f"{served.http}/api/campaigns", spec(csv=BAD_CSV, keep_good_rows=True)
    )
    assert status == 201, body
    assert body["import"]["accepted"] == 2
    assert [p["line"] for p in body["import"]["problems"]] == [3, 4, 5, 6, 7]
    campaign = body["campaign"]
    assert (campaign["state"], campaign["total"], campaign["done"]) == ("draft", 2, 0)
    assert campaign["counts"]["pending"] == 2 and campaign["caller_id"] == "clinic"

    status, rows = await api("GET", f"{served.http}/api/campaigns/{campaign['id']}/contacts")
    assert status == 200 and rows["total"] == 2
    assert [(r["line"], r["variables"]["name"], r["status"]) for r in rows["contacts"]] == [
        (2, "Ann", "pending"),
        (8, "Eve", "pending"),
    ]
    status, page = await api(
        "GET", f"{served.http}/api/campaigns/{campaign['id']}/contacts?offset=1&limit=5"
    )
    assert [r["line"] for r in page["contacts"]] == [8] and page["total"] == 2


async def test_spec_and_body_errors_name_the_field(
    served: CampaignBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{served.http}/api/campaigns"
    cases: list[tuple[object, int, str]] = [
        (spec(csv=GOOD, dialplan="nope"), 422, "dialplan: 'nope' does not exist"),
        (spec(csv=GOOD, rules={"max_concurrent": 0}), 422, "rules.max_concurrent"),
        (spec(csv=GOOD, rules={"calling_hours": ["9-5"]}), 422, "rules.calling_hours"),
        (spec(csv=GOOD, rules={"retry_delays_s": {"answered": 5}}), 422, "answered"),
        (spec(csv=GOOD, colour="red"), 422, "colour: unknown key"),
        (spec(), 422, "either as CSV text or as a list"),
        (spec(contacts=[{"to": "sip:x@127.0.0.1"}], keep_good_rows="yes"), 400, "keep_good_rows"),
        ([1, 2], 400, "body must be a JSON object"),
    ]
    for body, expected, words in cases:
        status, answer = await api("POST", url, body)
        assert (status, words in answer.get("error", "")) == (expected, True), (body, answer)
    status, answer = await api("POST", url, raw=b'{"name": ')
    assert status == 400 and answer["error"].startswith("body is not valid JSON")

    # A contact list may be far bigger than other requests (http.max_body_bytes: 64 KiB).
    big = "to,name\n" + "".join(f"sip:u{i}@127.0.0.1:5999,{'n' * 40}\n" for i in range(1500))
    assert len(big) > 2**16
    status, answer = await api("POST", url, spec(csv=big))
    assert status == 201 and answer["import"]["accepted"] == 1500, answer

    monkeypatch.setattr(campaign_api, "MAX_BODY_BYTES", 2000)
    status, answer = await api("POST", url, spec(csv=GOOD + "x" * 3000))
    assert status == 413 and "2000 bytes" in answer["error"]
    status, answer = await api("POST", url, spec(csv=GOOD))  # the limit is per request
    assert status == 201, answer


async def test_state_changes_results_and_refusals(served: CampaignBridge) -> None:
    base = f"{served.http}/api/campaigns"
    status, body = await api(
        "POST", base, spec(contacts=[{"to": "sip:ann@127.0.0.1:5999", "slot": "9am"}])
    )
    assert status == 201, body
    cid = body["campaign"]["id"]

    status, answer = await api("POST", f"{base}/{cid}/pause")
    assert status == 409 and "cannot pause a campaign that is draft" in answer["error"]
    for action, state in (("start", "running"), ("pause", "paused"), ("resume", "running")):
        status, answer = await api("POST", f"{base}/{cid}/{action}")
        assert (status, answer["state"]) == (200, state), answer
    status, answer = await api("POST", f"{base}/{cid}/stop")
    assert (status, answer["state"]) == (200, "stopped")
    status, answer = await api("POST", f"{base}/{cid}/start")
    assert status == 409

    for path in ("", "/contacts", "/export", "/start"):
        method = "POST" if path == "/start" else "GET"
        status, answer = await api(method, f"{base}/nosuch{path}")
        assert (status, answer.get("error")) == (404, "no campaign 'nosuch'"), (path, answer)
    status, answer = await api("GET", f"{base}/{cid}/export?format=xml")
    assert status == 400 and "csv or json" in answer["error"]
    status, answer = await api("GET", f"{base}/{cid}/contacts?limit=ten")
    assert status == 400 and "'limit'" in answer["error"]
    status, answer = await api("GET", f"{base}/{cid}/records/abc123/call.json")
    assert status == 404 and "no call record 'abc123'" in answer["error"]
    status, answer = await api("GET", f"{base}/{cid}/records/abc123/..%2Fsecret")
    assert status == 404

    status, answer = await api("GET", f"{base}/{cid}/export?format=csv")
    header, row = answer["text"].splitlines()
    assert header.startswith("contact_id,line,to,status") and header.endswith(",slot")
    assert "sip:ann@127.0.0.1:5999" in row and row.endswith(",9am")
    status, answer = await api("GET", f"{base}/{cid}/export?format=json")
    assert answer["campaign"]["state"] == "stopped"
    assert answer["contacts"][0]["variables"] == {"slot": "9am"}


async def test_do_not_call_list(served: CampaignBridge) -> None:
    url = f"{served.http}/api/dnc"
    status, answer = await api("POST", url, {"numbers": ["+1 555 0100", "sip:ann@127.0.0.1"]})
    assert (status, answer) == (200, {"added": 2})
    status, answer = await api("POST", url, {"numbers": ["+15550100"]})
    assert (status, answer) == (200, {"added": 0})
    status, answer = await api("POST", url, {"numbers": "+15550100"})
    assert status == 400 and "numbers" in answer["error"]


async def test_page_and_its_script_are_served(served: CampaignBridge) -> None:
    for path, words in (
        ("/campaigns", 'data-testid="campaign-list"'),
        ("/campaigns/abc", 'data-testid="contacts"'),
        ("/campaigns/static/campaign.js", "window.CampaignPage"),
    ):
        status, answer = await api("GET", served.http + path)
        assert status == 200 and words in answer["text"], path


async def test_a_lost_redis_is_a_503_naming_the_store(tmp_path: Path) -> None:
    async with redis_server() as url, running.bridges(tmp_path, None, url) as start:
        served = await start()
        status, _ = await api("POST", f"{served.http}/api/campaigns", spec(csv=GOOD))
        assert status == 201
        client = redis.Redis.from_url(url)
        with contextlib.suppress(redis.ConnectionError):
            await client.shutdown(nosave=True)  # the Redis server goes away
        status, answer = await api("GET", f"{served.http}/api/campaigns")
        assert status == 503 and "campaign store unavailable" in answer["error"], answer
