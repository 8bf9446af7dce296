"""Durable campaign state: the :class:`CampaignStore` protocol and its SQLite implementation,
plus the :class:`Limits` protocol (global concurrency slots and start tokens) and its
in-process implementation. The Redis store and limits (redis_store.py) follow the same protocols
so several bridge instances can share one campaign.

Nothing lost, nothing twice: :meth:`CampaignStore.claim_due` commits the attempt as started
before the dialer sends the INVITE, and :meth:`CampaignStore.recover` turns the attempts a dead
process left in flight into "interrupted" ones (counted, never re-dialled as the same attempt).

SQLite runs in WAL mode with ``synchronous=FULL``: NORMAL survives a killed process but may lose
the last commits on power loss, and a lost "attempt started" row would mean dialling that
attempt again after the reboot. FULL costs one fsync per commit, small against call set-up.
Every statement runs on the store's own single thread, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bridge.campaign.calendar import next_open, parse_window
from bridge.campaign.model import (
    OUTCOMES,
    Attempt,
    Campaign,
    CampaignRules,
    CampaignState,
    Contact,
    ContactStatus,
    Outcome,
)

T = TypeVar("T")

DB_NAME = "campaigns.sqlite3"


def dnc_key(number_or_uri: str) -> str:
    """What the do-not-call list matches on: the user part of a SIP URI (or a bare number)
    without visual separators, so ``sip:+1 (555) 010@x`` and ``+1555010`` are the same entry."""
    text = number_or_uri.strip()
    if text.lower().startswith(("sip:", "sips:")):
        text = text.split(":", 1)[1].split("@", 1)[0] if "@" in text else ""
    return "".join(ch for ch in text if ch not in " -.()/").lower()


class CampaignStore(Protocol):
    """Campaigns, contacts, attempts and the do-not-call list."""

    async def create(self, campaign: Campaign, contacts: list[Contact], now: float) -> None:
        """Store a new campaign and its contacts (due at ``now``); contact ids are assigned."""

    async def set_state(self, campaign_id: str, state: CampaignState, now: float) -> None: ...

    async def get(self, campaign_id: str) -> Campaign | None: ...

    async def list(self) -> list[Campaign]:
        """Every campaign, oldest first."""

    async def claim_due(
        self, campaign_id: str, now: float, limit: int, instance: str
    ) -> list[tuple[Contact, int]]:
        """Atomically take up to ``limit`` pending contacts due at ``now`` and record their next
        attempt as started by ``instance`` (committed before returning); returns each contact
        with its attempt number. Contacts outside their calling hours are not claimed but
        deferred to their next window start. Concurrent callers never get the same attempt."""

    async def finish_attempt(self, attempt: Attempt) -> None:
        """Record the outcome of an attempt in flight; the campaign's retry policy
        (:meth:`CampaignRules.retry_delay`) makes the contact pending again at
        ``ended_at + delay`` or done. An attempt no longer in flight is left as it is."""

    async def recover(self, instance: str, now: float) -> int:
        """Mark the attempts ``instance`` left in flight (it died) "interrupted" and apply the
        retry policy to them; returns how many there were."""

    async def next_due(self, campaign_id: str) -> float | None:
        """When the earliest pending contact is due; None when none is pending."""

    async def counts(self, campaign_id: str) -> dict[str, int]:
        """Contacts by status: ``pending``, ``in-progress``, and done ones by final outcome."""

    async def calls_started(self, campaign_id: str) -> int:
        """Attempts recorded so far (in flight or ended)."""

    async def updated_at(self, campaign_id: str) -> float:
        """When anything about the campaign last changed."""

    async def contacts(
        self, campaign_id: str
    ) -> list[tuple[Contact, ContactStatus, float | None, list[Attempt]]]:
        """Every contact with its status, next due time (pending only) and attempts (oldest
        first), in import order."""

    async def add_dnc(self, numbers: list[str]) -> int:
        """Add numbers or URIs (matched by :func:`dnc_key`); returns how many were new."""

    async def is_dnc(self, number_or_uri: str) -> bool: ...

    async def close(self) -> None: ...


class Limits(Protocol):
    """Concurrency slots and calls-per-second start tokens of a campaign, shared by every
    dialer of it (one process here, several through Redis)."""

    shared: bool  # other processes take from the same limits

    async def acquire(self, campaign_id: str, rules: CampaignRules, now: float) -> float:
        """Take a concurrency slot and a start token: 0.0 when taken, else the seconds to wait
        before asking again (nothing taken)."""

    async def release(self, campaign_id: str) -> None:
        """Give back a slot taken by :meth:`acquire` (the call ended or was never placed)."""


CATCH_UP_GAP = 0.5  # the closest two starts come, in intervals, when catching up


class LocalLimits:
    """:class:`Limits` within one process. Starts follow a schedule ``1 / calls_per_second``
    apart, so the long-run rate never exceeds the limit; after a late wake-up (a busy event
    loop) the next starts catch up on the schedule, never closer than half an interval, so
    the rate holds under load without bursts."""

    shared = False

    def __init__(self) -> None:
        self._busy: dict[str, int] = {}
        self._next_start: dict[str, float] = {}

    async def acquire(self, campaign_id: str, rules: CampaignRules, now: float) -> float:
        busy = self._busy.get(campaign_id, 0)
        if busy >= rules.max_concurrent:
            return 1.0 / rules.calls_per_second  # a slot frees when a call ends
        interval = 1.0 / rules.calls_per_second
        due = self._next_start.get(campaign_id, now)
        if now < due:
            return due - now
        self._next_start[campaign_id] = max(due + interval, now + CATCH_UP_GAP * interval)
        self._busy[campaign_id] = busy + 1
        return 0.0

    async def release(self, campaign_id: str) -> None:
        self._busy[campaign_id] = max(0, self._busy.get(campaign_id, 0) - 1)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, dialplan TEXT NOT NULL, caller_id TEXT NOT NULL,
    rules TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, campaign_id TEXT NOT NULL REFERENCES campaigns(id),
    line INTEGER NOT NULL, to_uri TEXT NOT NULL, timezone TEXT NOT NULL, variables TEXT NOT NULL,
    status TEXT NOT NULL, due REAL, attempts INTEGER NOT NULL DEFAULT 0, outcome TEXT
);
CREATE INDEX IF NOT EXISTS contacts_due ON contacts (campaign_id, status, due);
CREATE TABLE IF NOT EXISTS attempts (
    contact_id INTEGER NOT NULL REFERENCES contacts(id), number INTEGER NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, outcome TEXT, sip_status INTEGER,
    duration_s REAL, record_id TEXT, collected TEXT NOT NULL DEFAULT '{}', amd TEXT,
    instance TEXT NOT NULL, PRIMARY KEY (contact_id, number)
);
CREATE INDEX IF NOT EXISTS attempts_in_flight ON attempts (instance) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS dnc (number TEXT PRIMARY KEY, added_at REAL NOT NULL);
"""


class SqliteStore:
    """:class:`CampaignStore` in one SQLite file (WAL). Several stores, even in several
    processes, may share the file: claims run in ``BEGIN IMMEDIATE`` transactions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="campaign-db")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, directory: Path) -> SqliteStore:
        store = cls(directory / DB_NAME)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (taken at once, so claims serialise)."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _read(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        assert self._db is not None
        cursor = self._db.execute(sql, params)
        cursor.row_factory = sqlite3.Row
        return cursor.fetchall()

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._executor.shutdown(wait=True)

    # --- campaigns ----------------------------------------------------------------------------

    async def create(self, campaign: Campaign, contacts: list[Contact], now: float) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    campaign.id,
                    campaign.name,
                    campaign.dialplan,
                    campaign.caller_id,
                    json.dumps(campaign.rules.as_dict()),
                    campaign.state,
                    campaign.created_at,
                    now,
                ),
            )
            for contact in contacts:
                cursor = db.execute(
                    "INSERT INTO contacts (campaign_id, line, to_uri, timezone, variables,"
                    " status, due) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        campaign.id,
                        contact.line,
                        contact.to,
                        contact.timezone,
                        json.dumps(contact.variables),
                        now,
                    ),
                )
                contact.id = int(cursor.lastrowid or 0)
                contact.campaign_id = campaign.id

        await self._run(self._tx, insert)

    async def set_state(self, campaign_id: str, state: CampaignState, now: float) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE campaigns SET state = ?, updated_at = ? WHERE id = ?",
                (state, now, campaign_id),
            )

        await self._run(self._tx, update)

    async def get(self, campaign_id: str) -> Campaign | None:
        rows = await self._run(self._read, "SELECT * FROM campaigns WHERE id = ?", campaign_id)
        return _campaign(rows[0]) if rows else None

    async def list(self) -> list[Campaign]:
        rows = await self._run(self._read, "SELECT * FROM campaigns ORDER BY created_at, id")
        return [_campaign(row) for row in rows]

    # --- attempts -----------------------------------------------------------------------------

    async def claim_due(
        self, campaign_id: str, now: float, limit: int, instance: str
    ) -> list[tuple[Contact, int]]:
        def claim(db: sqlite3.Connection) -> list[tuple[Contact, int]]:
            rules_json = db.execute(
                "SELECT rules FROM campaigns WHERE id = ?", (campaign_id,)
            ).fetchone()
            if rules_json is None:
                return []
            windows = [parse_window(w) for w in json.loads(rules_json[0])["calling_hours"]]
            claimed: list[tuple[Contact, int]] = []
            while len(claimed) < limit:
                cursor = db.execute(
                    "SELECT * FROM contacts WHERE campaign_id = ? AND status = 'pending'"
                    " AND due <= ? ORDER BY due, id LIMIT ?",
                    (campaign_id, now, limit - len(claimed)),
                )
                cursor.row_factory = sqlite3.Row
                rows = cursor.fetchall()
                if not rows:
                    break
                for row in rows:
                    opens = next_open(windows, row["timezone"], now)
                    if opens > now:
                        db.execute("UPDATE contacts SET due = ? WHERE id = ?", (opens, row["id"]))
                        continue
                    number = row["attempts"] + 1
                    db.execute(
                        "UPDATE contacts SET status = 'in-progress', attempts = ?, due = NULL"
                        " WHERE id = ?",
                        (number, row["id"]),
                    )
                    db.execute(
                        "INSERT INTO attempts (contact_id, number, started_at, instance)"
                        " VALUES (?, ?, ?, ?)",
                        (row["id"], number, now, instance),
                    )
                    claimed.append((_contact(row), number))
            if claimed:
                _touch(db, campaign_id, now)
            return claimed

        return await self._run(self._tx, claim)

    async def finish_attempt(self, attempt: Attempt) -> None:
        await self._run(self._tx, lambda db: _finish(db, attempt))

    async def recover(self, instance: str, now: float) -> int:
        def recover(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT contact_id, number FROM attempts WHERE instance = ? AND outcome IS NULL",
                (instance,),
            ).fetchall()
            for contact_id, number in rows:
                _finish(db, Attempt(contact_id, number, now, now, "interrupted", instance=instance))
            return len(rows)

        return await self._run(self._tx, recover)

    async def next_due(self, campaign_id: str) -> float | None:
        rows = await self._run(
            self._read,
            "SELECT MIN(due) AS due FROM contacts WHERE campaign_id = ? AND status = 'pending'",
            campaign_id,
        )
        return rows[0]["due"]

    async def counts(self, campaign_id: str) -> dict[str, int]:
        rows = await self._run(
            self._read,
            "SELECT CASE WHEN status = 'done' THEN outcome ELSE status END AS key,"
            " COUNT(*) AS n FROM contacts WHERE campaign_id = ? GROUP BY key",
            campaign_id,
        )
        counts = dict.fromkeys(("pending", "in-progress", *OUTCOMES), 0)
        counts.update({row["key"]: row["n"] for row in rows})
        return counts

    async def calls_started(self, campaign_id: str) -> int:
        rows = await self._run(
            self._read,
            "SELECT COUNT(*) AS n FROM attempts JOIN contacts ON contacts.id = contact_id"
            " WHERE campaign_id = ?",
            campaign_id,
        )
        return int(rows[0]["n"])

    async def updated_at(self, campaign_id: str) -> float:
        rows = await self._run(
            self._read, "SELECT updated_at FROM campaigns WHERE id = ?", campaign_id
        )
        return float(rows[0]["updated_at"]) if rows else 0.0

    async def contacts(
        self, campaign_id: str
    ) -> list[tuple[Contact, ContactStatus, float | None, list[Attempt]]]:
        def read() -> list[tuple[Contact, ContactStatus, float | None, list[Attempt]]]:
            attempts: dict[int, list[Attempt]] = {}
            for row in self._read(
                "SELECT attempts.* FROM attempts JOIN contacts ON contacts.id = contact_id"
                " WHERE campaign_id = ? ORDER BY contact_id, number",
                campaign_id,
            ):
                attempts.setdefault(row["contact_id"], []).append(_attempt(row))
            return [
                (_contact(row), row["status"], row["due"], attempts.get(row["id"], []))
                for row in self._read(
                    "SELECT * FROM contacts WHERE campaign_id = ? ORDER BY id", campaign_id
                )
            ]

        return await self._run(read)

    # --- do not call --------------------------------------------------------------------------

    async def add_dnc(self, numbers: list[str]) -> int:
        keys = {dnc_key(n) for n in numbers} - {""}
        now = time.time()

        def add(db: sqlite3.Connection) -> int:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO dnc VALUES (?, ?)", [(key, now) for key in sorted(keys)]
            )
            return db.total_changes - before

        return await self._run(self._tx, add)

    async def is_dnc(self, number_or_uri: str) -> bool:
        rows = await self._run(
            self._read, "SELECT 1 FROM dnc WHERE number = ?", dnc_key(number_or_uri)
        )
        return bool(rows)


def _touch(db: sqlite3.Connection, campaign_id: str, now: float) -> None:
    db.execute("UPDATE campaigns SET updated_at = ? WHERE id = ?", (now, campaign_id))


def _finish(db: sqlite3.Connection, attempt: Attempt) -> None:
    """Close an attempt in flight and move its contact on (same transaction)."""
    assert attempt.outcome is not None and attempt.ended_at is not None
    updated = db.execute(
        "UPDATE attempts SET ended_at = ?, outcome = ?, sip_status = ?, duration_s = ?,"
        " record_id = ?, collected = ?, amd = ? WHERE contact_id = ? AND number = ?"
        " AND outcome IS NULL",
        (
            attempt.ended_at,
            attempt.outcome,
            attempt.sip_status,
            attempt.duration_s,
            attempt.record_id,
            json.dumps(attempt.collected),
            attempt.amd,
            attempt.contact_id,
            attempt.number,
        ),
    ).rowcount
    if not updated:
        return
    campaign_id, rules_json = db.execute(
        "SELECT campaigns.id, rules FROM campaigns JOIN contacts ON campaign_id = campaigns.id"
        " WHERE contacts.id = ?",
        (attempt.contact_id,),
    ).fetchone()
    delay = CampaignRules.from_dict(json.loads(rules_json)).retry_delay(
        attempt.outcome, attempt.number
    )
    if delay is None:
        db.execute(
            "UPDATE contacts SET status = 'done', outcome = ?, due = NULL WHERE id = ?",
            (attempt.outcome, attempt.contact_id),
        )
    else:
        db.execute(
            "UPDATE contacts SET status = 'pending', outcome = ?, due = ? WHERE id = ?",
            (attempt.outcome, attempt.ended_at + delay, attempt.contact_id),
        )
    _touch(db, campaign_id, attempt.ended_at)


def _campaign(row: sqlite3.Row) -> Campaign:
    return Campaign(
        row["id"],
        row["name"],
        row["dialplan"],
        row["caller_id"],
        CampaignRules.from_dict(json.loads(row["rules"])),
        row["state"],
        row["created_at"],
    )


def _contact(row: sqlite3.Row) -> Contact:
    return Contact(
        row["id"],
        row["campaign_id"],
        row["line"],
        row["to_uri"],
        row["timezone"],
        json.loads(row["variables"]),
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    outcome: Outcome | None = row["outcome"]
    return Attempt(
        row["contact_id"],
        row["number"],
        row["started_at"],
        row["ended_at"],
        outcome,
        row["sip_status"],
        row["duration_s"],
        row["record_id"],
        json.loads(row["collected"]),
        row["amd"],
        row["instance"],
    )
