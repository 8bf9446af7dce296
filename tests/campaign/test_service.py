"""CampaignService: spec validation, the import report, state changes, exports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.campaign.dialer import SystemClock
from bridge.campaign.model import CampaignError
from bridge.campaign.service import CampaignService
from bridge.campaign.store import LocalLimits, SqliteStore
from bridge.sip.protection import DestinationPolicy

CSV = "to,name,status\nsip:a@127.0.0.1,Ann,vip\nsip:b@127.0.0.1,Ben,\nsip:x@10.9.9.9,Xi,\n"
SPEC = {"name": "reminders", "dialplan": "reminder"}


class NeverCalled:
    async def place(self, campaign: object, contact: object) -> object:
        raise AssertionError("no campaign is started in these tests")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[CampaignService]:
    store = await SqliteStore.open(tmp_path)
    made = CampaignService(
        store,
        LocalLimits(),
        NeverCalled(),  # type: ignore[arg-type]
        dialplan_exists=lambda name: name == "reminder",
        allows=DestinationPolicy(["sip:*@127.0.0.1"]).allows,
        clock=SystemClock(),
    )
    yield made
    await made.close()


async def test_bad_rows_reject_the_campaign_unless_good_rows_are_kept(
    service: CampaignService,
) -> None:
    with pytest.raises(CampaignError) as refused:
        await service.create(SPEC, csv_text=CSV)
    assert refused.value.status == 422
    assert [(p.line, p.reason) for p in refused.value.problems] == [
        (4, "sip:x@10.9.9.9 is not allowed by sip.outbound_targets")
    ]
    assert await service.list() == []
    campaign, report = await service.create(SPEC, csv_text=CSV, keep_good_rows=True)
    assert report.accepted == 2 and [p.line for p in report.problems] == [4]
    status = await service.status(campaign.id)
    assert (status["state"], status["total"], status["counts"]["pending"]) == ("draft", 2, 2)
    assert status["caller_id"] == "bridge" and status["rules"]["max_attempts"] == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dialplan": "reminder"}, "name: required"),
        ({"name": "x", "dialplan": "nope"}, "dialplan: 'nope' does not exist"),
        ({**SPEC, "colour": "red"}, "colour: unknown key"),
        ({**SPEC, "timezone": "Mars/Olympus"}, "timezone: unknown time zone"),
        ({**SPEC, "caller_id": "a@b"}, "caller_id: must be a plain SIP user part"),
        ({**SPEC, "rules": {"max_concurrent": 0}}, "rules.max_concurrent: must be an integer"),
        ({**SPEC, "rules": {"calls_per_second": "fast"}}, "rules.calls_per_second: must be"),
        ({**SPEC, "rules": {"calling_hours": ["9-5"]}}, "rules.calling_hours: '9-5' is not"),
        ({**SPEC, "rules": {"retry_delays_s": {"answered": 5}}}, "retry_delays_s.answered: not"),
        ({**SPEC, "rules": {"retry_delays_s": {"busy": -1}}}, "retry_delays_s.busy: must be"),
        ({**SPEC, "rules": {"max_tries": 2}}, "rules.max_tries: unknown key"),
    ],
)
async def test_bad_specs_name_the_field(service: CampaignService, spec: dict, message: str) -> None:
    with pytest.raises(CampaignError, match=message.replace(".", r"\.")):
        await service.create(spec, csv_text=CSV, keep_good_rows=True)


async def test_contacts_must_come_one_way(service: CampaignService) -> None:
    with pytest.raises(CampaignError, match="either as CSV text or as a list"):
        await service.create(SPEC, csv_text=CSV, contacts=[{"to": "sip:a@127.0.0.1"}])
    with pytest.raises(CampaignError, match="no contact to call"):
        await service.create(SPEC, csv_text="to\nsip:x@10.0.0.1\n", keep_good_rows=True)


async def test_state_changes(service: CampaignService) -> None:
    campaign, _ = await service.create(SPEC, contacts=[{"to": "sip:a@127.0.0.1"}])
    with pytest.raises(CampaignError) as wrong:
        await service.pause(campaign.id)
    assert wrong.value.status == 409 and "cannot pause a campaign that is draft" in str(wrong.value)
    assert (await service.stop(campaign.id))["state"] == "stopped"
    with pytest.raises(CampaignError) as gone:
        await service.start("nope")
    assert gone.value.status == 404


async def test_exports(service: CampaignService) -> None:
    campaign, _ = await service.create(SPEC, csv_text=CSV, keep_good_rows=True)
    rows = list(csv.DictReader(io.StringIO(await service.export(campaign.id, "csv"))))
    assert [(r["to"], r["name"], r["status"], r["variables.status"]) for r in rows] == [
        ("sip:a@127.0.0.1", "Ann", "pending", "vip"),  # a column named like a result column
        ("sip:b@127.0.0.1", "Ben", "pending", ""),
    ]
    exported = json.loads(await service.export(campaign.id, "json"))
    assert exported["campaign"]["id"] == campaign.id
    assert [c["variables"]["name"] for c in exported["contacts"]] == ["Ann", "Ben"]
    assert exported["contacts"][0]["attempt_log"] == []
    with pytest.raises(CampaignError, match="format: must be csv or json"):
        await service.export(campaign.id, "xml")


async def test_nothing_is_dialled_before_run_has_recovered(service: CampaignService) -> None:
    """A campaign started while the bridge is still loading waits for ``run()`` (recovery of
    the attempts a crash left in flight comes first, and calls need the engines)."""
    campaign, _ = await service.create(SPEC, contacts=[{"to": "sip:a@127.0.0.1"}])
    await service.start(campaign.id)
    await asyncio.sleep(0.5)
    status = await service.status(campaign.id)
    assert status["state"] == "running" and status["calls_started"] == 0
