"""The SQLite campaign store: claims, outcomes and the retry policy, crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.campaign.model import Attempt, Campaign, CampaignRules, Contact
from bridge.campaign.store import DB_NAME, SqliteStore, dnc_key

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # a Monday, 10:00 UTC


def contacts(n: int) -> list[Contact]:
    return [Contact(0, "", i + 2, f"sip:c{i}@127.0.0.1", "UTC", {"i": str(i)}) for i in range(n)]


def campaign(cid: str = "c1", **rules: object) -> Campaign:
    return Campaign(cid, "test", "reminder", "bridge", CampaignRules(**rules), "running", T0)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path)
    yield opened
    await opened.close()


def ended(contact_id: int, number: int, outcome: str, at: float) -> Attempt:
    return Attempt(contact_id, number, at - 1, at, outcome, instance="a")  # type: ignore[arg-type]


async def test_file_is_in_wal_mode(store: SqliteStore, tmp_path: Path) -> None:
    assert store.path == tmp_path / DB_NAME
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file


async def test_claims_follow_import_order_and_record_the_attempt(store: SqliteStore) -> None:
    await store.create(campaign(), contacts(3), T0)
    claimed = await store.claim_due("c1", T0, 2, "a")
    assert [(c.line, n) for c, n in claimed] == [(2, 1), (3, 1)]
    assert claimed[0][0].variables == {"i": "0"}
    assert await store.counts("c1") == {
        **dict.fromkeys(
            ("answered", "voicemail", "busy", "no-answer", "failed", "dnc", "interrupted"), 0
        ),
        "pending": 1,
        "in-progress": 2,
    }
    rows = await store.contacts("c1")
    assert [(status, [a.outcome for a in attempts]) for _, status, _, attempts in rows] == [
        ("in-progress", [None]),
        ("in-progress", [None]),
        ("pending", []),
    ]
    assert await store.calls_started("c1") == 2


async def test_retry_policy_schedules_the_next_attempt(store: SqliteStore) -> None:
    rules = {"retry_delays_s": {"busy": 60.0}, "max_attempts": 2}
    await store.create(campaign(**rules), contacts(2), T0)
    (first, n1), (second, _) = await store.claim_due("c1", T0, 2, "a")
    await store.finish_attempt(ended(first.id, n1, "busy", T0 + 5))
    await store.finish_attempt(ended(second.id, 1, "no-answer", T0 + 5))  # not retried
    assert await store.next_due("c1") == T0 + 65
    assert await store.claim_due("c1", T0 + 64, 5, "a") == []
    ((again, number),) = await store.claim_due("c1", T0 + 65, 5, "a")
    assert (again.id, number) == (first.id, 2)
    await store.finish_attempt(ended(first.id, 2, "busy", T0 + 70))  # max_attempts reached
    counts = await store.counts("c1")
    assert (counts["busy"], counts["no-answer"], counts["pending"]) == (1, 1, 0)
    assert await store.next_due("c1") is None


async def test_answered_is_final_and_a_second_finish_changes_nothing(store: SqliteStore) -> None:
    await store.create(campaign(retry_delays_s={"busy": 1.0}), contacts(1), T0)
    ((contact, number),) = await store.claim_due("c1", T0, 1, "a")
    await store.finish_attempt(ended(contact.id, number, "answered", T0 + 30))
    await store.finish_attempt(ended(contact.id, number, "busy", T0 + 31))
    ((_, status, _, attempts),) = await store.contacts("c1")
    assert status == "done" and [a.outcome for a in attempts] == ["answered"]


async def test_contacts_outside_calling_hours_are_deferred_not_claimed(store: SqliteStore) -> None:
    rules = {"calling_hours": ["09:00-18:00"]}
    await store.create(campaign(**rules), contacts(1), T0)
    tokyo = Contact(0, "", 9, "sip:tokyo@127.0.0.1", "Asia/Tokyo", {})
    await store.create(campaign("c2", **rules), [tokyo], T0)
    assert len(await store.claim_due("c1", T0, 5, "a")) == 1  # 10:00 in UTC
    assert await store.claim_due("c2", T0, 5, "a") == []  # 19:00 in Tokyo
    tomorrow_9 = datetime(2026, 3, 3, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    assert await store.next_due("c2") == tomorrow_9
    assert (await store.counts("c2"))["pending"] == 1 and await store.calls_started("c2") == 0
    assert len(await store.claim_due("c2", tomorrow_9, 5, "a")) == 1


async def test_concurrent_claims_never_share_an_attempt(tmp_path: Path) -> None:
    """Two stores on one file (as two processes would be) claiming at once, many rounds."""
    stores = [await SqliteStore.open(tmp_path) for _ in range(3)]
    await stores[0].create(campaign(), contacts(120), T0)

    async def drain(store: SqliteStore, name: str) -> list[tuple[int, int]]:
        got = []
        while batch := await store.claim_due("c1", T0, 3, name):
            got += [(c.id, n) for c, n in batch]
            await asyncio.sleep(0.002)  # a dialer places its calls between claims
        return got

    results = await asyncio.gather(*(drain(s, f"i{k}") for k, s in enumerate(stores)))
    union = [claim for result in results for claim in result]
    assert len(union) == len(set(union)) == 120
    assert sum(1 for result in results if result) >= 2, "the claims did interleave"
    for store in stores:
        await store.close()


async def test_recover_interrupts_only_this_instances_attempts(store: SqliteStore) -> None:
    await store.create(
        campaign(retry_delays_s={"interrupted": 30.0}, max_attempts=2), contacts(3), T0
    )
    mine = await store.claim_due("c1", T0, 2, "dead")
    theirs = await store.claim_due("c1", T0, 1, "alive")
    assert await store.recover("dead", T0 + 100) == 2
    assert await store.recover("dead", T0 + 101) == 0
    rows = {
        contact.id: (status, attempts)
        for contact, status, _, attempts in await store.contacts("c1")
    }
    for contact, _ in mine:
        status, attempts = rows[contact.id]
        assert status == "pending" and [a.outcome for a in attempts] == ["interrupted"]
    assert rows[theirs[0][0].id][0] == "in-progress"
    # the attempt the dead process might still report is not reopened
    await store.finish_attempt(ended(mine[0][0].id, 1, "answered", T0 + 102))
    assert (await store.counts("c1"))["answered"] == 0
    # the retry is a new attempt, numbered 2
    again = await store.claim_due("c1", T0 + 130, 5, "dead")
    assert sorted(n for _, n in again) == [2, 2]


async def test_do_not_call_matches_numbers_and_uris(store: SqliteStore) -> None:
    assert await store.add_dnc(["+1 (555) 010-0199", "sip:Bob@127.0.0.1", "+15550100199"]) == 2
    assert await store.is_dnc("sip:+15550100199@trunk.example.com")
    assert await store.is_dnc("sip:bob@127.0.0.1:5080")
    assert not await store.is_dnc("sip:alice@127.0.0.1")
    assert dnc_key("sip:+1-555-010@x") == "+1555010"
