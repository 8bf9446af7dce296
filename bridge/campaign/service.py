"""`CampaignService`: the one facade the HTTP API, the CLI (through the API) and tests use.

It validates a campaign spec and its contacts (every bad row reported, good rows kept only when
asked), moves campaigns through their states (draft → running ⇄ paused → stopped; running →
completed when no contact is left), answers status, contact rows and exports, and keeps one
:class:`Dialer` per running campaign. :meth:`run` recovers this instance's attempts left in
flight by a crash, then keeps dialling every running campaign (also ones another instance
started, when the store is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.campaign.calendar import parse_window, zone
from bridge.campaign.contacts import MAX_CONTACTS, ImportRules, parse_csv, parse_list
from bridge.campaign.dialer import Clock, Dialer, Placer, SipPlacer, SystemClock
from bridge.campaign.model import (
    FINAL_OUTCOMES,
    OUTCOMES,
    Attempt,
    Campaign,
    CampaignError,
    CampaignRules,
    CampaignState,
    Contact,
    ContactStatus,
    ImportReport,
    default_retry_delays,
)
from bridge.campaign.store import CampaignStore, Limits, LocalLimits, SqliteStore
from bridge.config import Config, ConfigError
from bridge.sip.protection import DestinationPolicy

if TYPE_CHECKING:
    from bridge.server import Bridge
    from bridge.sip.front import SipFront

log = logging.getLogger(__name__)

CAMPAIGNS = web.AppKey("campaigns", "CampaignService")  # the service, for the HTTP routes
MAX_CONCURRENT = 1000
MAX_CALLS_PER_SECOND = 100.0
MAX_ATTEMPTS = 20
# Spec keys the HTTP body carries beside the campaign itself.
_BODY_KEYS = {"contacts", "csv", "keep_good_rows"}
_SPEC_KEYS = {"name", "dialplan", "caller_id", "rules", "timezone"}
# Allowed state changes: action -> (states it applies to, resulting state).
_TRANSITIONS: dict[str, tuple[tuple[CampaignState, ...], CampaignState]] = {
    "start": (("draft",), "running"),
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "stop": (("draft", "running", "paused"), "stopped"),
}


@dataclass
class ServiceSettings:
    instance: str = "local"  # names this process's attempts; stable across restarts
    default_caller_id: str = "bridge"
    default_timezone: str = "UTC"
    number_uri: str | None = None  # phone number -> SIP URI template, "sip:{number}@host"
    poll_s: float = 1.0


def parse_rules(data: object) -> CampaignRules:
    """Rules from user JSON; CampaignError names the field (``rules.max_concurrent: ...``)."""
    if data is None:
        return CampaignRules()
    if not isinstance(data, dict):
        raise CampaignError("rules: expected an object")
    defaults = CampaignRules()
    unknown = set(data) - set(defaults.as_dict())
    if unknown:
        raise CampaignError(f"rules.{sorted(unknown)[0]}: unknown key")

    def number(key: str, low: float, high: float, integer: bool) -> Any:
        value = data.get(key, getattr(defaults, key))
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            what = "an integer" if integer else "a number"
            raise CampaignError(f"rules.{key}: must be {what} from {low:g} to {high:g}")
        return value

    rules = CampaignRules(
        max_concurrent=number("max_concurrent", 1, MAX_CONCURRENT, True),
        calls_per_second=float(number("calls_per_second", 0.001, MAX_CALLS_PER_SECOND, False)),
        max_attempts=number("max_attempts", 1, MAX_ATTEMPTS, True),
    )
    hours = data.get("calling_hours", [])
    if not isinstance(hours, list) or not all(isinstance(h, str) for h in hours):
        raise CampaignError("rules.calling_hours: expected a list of windows like '09:00-18:00'")
    for window in hours:
        try:
            parse_window(window)
        except ValueError as exc:
            raise CampaignError(f"rules.calling_hours: {exc}") from None
    rules.calling_hours = list(hours)
    delays = data.get("retry_delays_s", default_retry_delays())
    if not isinstance(delays, dict):
        raise CampaignError("rules.retry_delays_s: expected an object {outcome: seconds}")
    for outcome, delay in delays.items():
        if outcome not in OUTCOMES or outcome in FINAL_OUTCOMES:
            retryable = ", ".join(o for o in OUTCOMES if o not in FINAL_OUTCOMES)
            raise CampaignError(f"rules.retry_delays_s.{outcome}: not one of {retryable}")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise CampaignError(f"rules.retry_delays_s.{outcome}: must be seconds >= 0")
    rules.retry_delays_s = {k: float(v) for k, v in delays.items()}
    return rules


class CampaignService:
    def __init__(
        self,
        store: CampaignStore,
        limits: Limits,
        placer: Placer,
        *,
        dialplan_exists: Callable[[str], bool],
        allows: Callable[[str], bool],
        settings: ServiceSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.placer = placer
        self.dialplan_exists = dialplan_exists
        self.allows = allows  # sip.outbound_targets, checked at import and again at dial time
        self.settings = settings or ServiceSettings()
        self.clock = clock or SystemClock()
        self._dialers: dict[str, tuple[Dialer, asyncio.Task[None]]] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._dialling = False  # set by run(): no call before recovery (and engines) are done

    # --- creation -----------------------------------------------------------------------------

    async def create(
        self,
        spec: dict[str, Any],
        csv_text: str | None = None,
        contacts: list[dict[str, Any]] | None = None,
        keep_good_rows: bool = False,
    ) -> tuple[Campaign, ImportReport]:
        """A new draft campaign; CampaignError (422) for a bad spec, or bad rows unless
        ``keep_good_rows`` (then they are only reported, and at least one row must be good)."""
        if not isinstance(spec, dict):
            raise CampaignError("the campaign must be a JSON object")
        unknown = set(spec) - _SPEC_KEYS - _BODY_KEYS
        if unknown:
            raise CampaignError(f"{sorted(unknown)[0]}: unknown key")
        for key in ("name", "dialplan"):
            if not isinstance(spec.get(key), str) or not spec[key].strip():
                raise CampaignError(f"{key}: required, a non-empty string")
        caller_id = spec.get("caller_id", self.settings.default_caller_id)
        timezone = spec.get("timezone", self.settings.default_timezone)
        for key, value in (("caller_id", caller_id), ("timezone", timezone)):
            if not isinstance(value, str) or not value:
                raise CampaignError(f"{key}: must be a non-empty string")
        if any(c in caller_id for c in '@:;<> "\r\n'):
            raise CampaignError("caller_id: must be a plain SIP user part (no @ : ; <> or spaces)")
        try:
            zone(timezone)
        except ValueError as exc:
            raise CampaignError(f"timezone: {exc}") from None
        if not self.dialplan_exists(spec["dialplan"]):
            raise CampaignError(f"dialplan: {spec['dialplan']!r} does not exist")
        rules = parse_rules(spec.get("rules"))
        if (csv_text is None) == (contacts is None):
            raise CampaignError("give the contacts either as CSV text or as a list, not both")
        import_rules = ImportRules(self.allows, timezone, self.settings.number_uri)
        if csv_text is not None:
            if not isinstance(csv_text, str):
                raise CampaignError("csv: expected CSV text")
            good, problems = parse_csv(csv_text, import_rules)
        else:
            if not isinstance(contacts, list):
                raise CampaignError("contacts: expected a list of objects")
            good, problems = parse_list(contacts, import_rules)
        if len(good) > MAX_CONTACTS:
            raise CampaignError(f"contacts: at most {MAX_CONTACTS} per campaign")
        if problems and not keep_good_rows:
            raise CampaignError(f"{len(problems)} bad contact row(s), none imported", problems)
        if not good:
            raise CampaignError("no contact to call", problems)
        now = self.clock.now()
        campaign = Campaign(
            uuid.uuid4().hex[:12],
            spec["name"].strip(),
            spec["dialplan"],
            caller_id,
            rules,
            "draft",
            now,
        )
        await self.store.create(campaign, good, now)
        log.info("campaign %s created: %d contacts", campaign.id, len(good))
        return campaign, ImportReport(len(good), problems)

    # --- state --------------------------------------------------------------------------------

    async def start(self, campaign_id: str) -> dict[str, Any]:
        return await self._change(campaign_id, "start")

    async def pause(self, campaign_id: str) -> dict[str, Any]:
        return await self._change(campaign_id, "pause")

    async def resume(self, campaign_id: str) -> dict[str, Any]:
        return await self._change(campaign_id, "resume")

    async def stop(self, campaign_id: str) -> dict[str, Any]:
        return await self._change(campaign_id, "stop")

    async def _change(self, campaign_id: str, action: str) -> dict[str, Any]:
        """Apply ``action``; the new status. CampaignError 404 (unknown), 409 (wrong state)."""
        campaign = await self._get(campaign_id)
        allowed, state = _TRANSITIONS[action]
        if campaign.state not in allowed:
            raise CampaignError(f"cannot {action} a campaign that is {campaign.state}", status=409)
        await self.store.set_state(campaign_id, state, self.clock.now())
        if state == "running" and self._dialling:
            self._ensure_dialer(campaign_id)
        elif campaign_id in self._dialers:
            self._dialers[campaign_id][0].wake()
        return await self.status(campaign_id)

    async def _get(self, campaign_id: str) -> Campaign:
        campaign = await self.store.get(campaign_id)
        if campaign is None:
            raise CampaignError(f"no campaign {campaign_id!r}", status=404)
        return campaign

    # --- reading ------------------------------------------------------------------------------

    async def status(self, campaign_id: str) -> dict[str, Any]:
        return await self._status(await self._get(campaign_id))

    async def _status(self, campaign: Campaign) -> dict[str, Any]:
        counts = await self.store.counts(campaign.id)
        total = sum(counts.values())
        return {
            **campaign.as_dict(),
            "total": total,
            "done": total - counts["pending"] - counts["in-progress"],
            "counts": counts,
            "in_flight": counts["in-progress"],
            "calls_started": await self.store.calls_started(campaign.id),
            "updated": await self.store.updated_at(campaign.id),
        }

    async def list(self) -> list[dict[str, Any]]:
        return [await self._status(c) for c in await self.store.list()]

    async def contacts(self, campaign_id: str) -> list[dict[str, Any]]:
        """One row per contact, in import order (see :func:`contact_row`)."""
        await self._get(campaign_id)
        return [contact_row(*entry) for entry in await self.store.contacts(campaign_id)]

    async def export(self, campaign_id: str, fmt: str) -> str:
        """CSV (one line per contact, variables and ``collected.*`` as columns) or JSON (the
        status and every contact with its attempts)."""
        if fmt not in ("csv", "json"):
            raise CampaignError("format: must be csv or json", status=400)
        campaign = await self._get(campaign_id)
        entries = await self.store.contacts(campaign_id)
        if fmt == "json":
            rows = [
                {**contact_row(*entry), "attempt_log": [a.as_dict() for a in entry[3]]}
                for entry in entries
            ]
            return json.dumps({"campaign": await self._status(campaign), "contacts": rows})
        return _csv([contact_row(*entry) for entry in entries])

    async def add_dnc(self, numbers: list[str]) -> int:
        """Add numbers (or SIP URIs) to the do-not-call list; returns how many were new."""
        if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
            raise CampaignError("numbers: expected a list of strings", status=400)
        return await self.store.add_dnc(numbers)

    # --- dialling -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover this instance's attempts cut by a crash, then dial every running campaign
        until cancelled."""
        recovered = await self.store.recover(self.settings.instance, self.clock.now())
        if recovered:
            log.warning("%d campaign attempts were cut by a restart: marked interrupted", recovered)
        self._dialling = True
        while True:
            for campaign in await self.store.list():
                if campaign.state == "running":
                    self._ensure_dialer(campaign.id)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    def _ensure_dialer(self, campaign_id: str) -> None:
        running = self._dialers.get(campaign_id)
        if running is not None and not running[1].done():
            running[0].wake()
            return
        dialer = Dialer(
            campaign_id,
            self.store,
            self.limits,
            self.placer,
            clock=self.clock,
            instance=self.settings.instance,
            allows=self.allows,
            calls=self._calls,
            poll_s=self.settings.poll_s,
        )
        task = asyncio.create_task(dialer.run(), name=f"campaign-{campaign_id}")
        task.add_done_callback(_log_failure)
        self._dialers[campaign_id] = (dialer, task)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop dialling; calls in flight get ``grace_s`` to end (the rest stay in flight in
        the store and are recovered as interrupted at the next start)."""
        for _, task in self._dialers.values():
            task.cancel()
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=grace_s)
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(
            *(t for _, t in self._dialers.values()), *self._calls, return_exceptions=True
        )
        await self.store.close()


async def open_campaigns(config: Config, bridge: Bridge, front: SipFront) -> CampaignService:
    """The service ``bridge serve`` runs: SQLite under ``campaigns.dir``, or with
    ``campaigns.redis_url`` the shared store and limits of redis_store.py
    (``open_store(url, instance) -> (CampaignStore, Limits)``)."""
    settings = config.campaigns
    store: CampaignStore
    limits: Limits
    if settings.redis_url:
        try:
            from bridge.campaign import redis_store  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise ConfigError(f"campaigns.redis_url: Redis support unavailable: {exc}") from None
        store, limits = await redis_store.open_store(settings.redis_url, settings.instance)
    else:
        store, limits = await SqliteStore.open(Path(settings.dir)), LocalLimits()
    return CampaignService(
        store,
        limits,
        SipPlacer(front, settings.ring_timeout_s),
        dialplan_exists=lambda name: name in bridge.dialplans.names(),
        allows=DestinationPolicy(config.sip.outbound_targets).allows,
        settings=ServiceSettings(
            instance=settings.instance,
            default_caller_id=config.sip.outbound_from,
            default_timezone=settings.default_timezone,
            number_uri=settings.number_uri,
            poll_s=settings.poll_s,
        ),
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("campaign dialer %s failed", task.get_name(), exc_info=task.exception())


def contact_row(
    contact: Contact, status: ContactStatus, next_due: float | None, attempts: list[Attempt]
) -> dict[str, Any]:
    """``{contact_id, line, to, variables, status, outcome, attempts, last_sip_status,
    duration_s, collected, amd, record_ids, next_due}``: ``outcome`` is the last attempt's,
    ``duration_s`` the talk time summed over attempts, ``collected`` the variables every
    attempt's dialplan set (later attempts win), ``next_due`` only while pending."""
    ended = [a for a in attempts if a.outcome is not None]
    durations = [a.duration_s for a in attempts if a.duration_s is not None]
    collected: dict[str, Any] = {}
    for attempt in attempts:
        collected.update(attempt.collected)
    return {
        "contact_id": contact.id,
        "line": contact.line,
        "to": contact.to,
        "variables": contact.variables,
        "status": status,
        "outcome": ended[-1].outcome if ended else None,
        "attempts": len(attempts),
        "last_sip_status": ended[-1].sip_status if ended else None,
        "duration_s": round(sum(durations), 3) if durations else None,
        "collected": collected,
        "amd": next((a.amd for a in reversed(attempts) if a.amd), None),
        "record_ids": [a.record_id for a in attempts if a.record_id],
        "next_due": next_due if status == "pending" else None,
    }


def _csv(rows: list[dict[str, Any]]) -> str:
    fixed = [k for k in rows[0] if k not in ("variables", "collected")] if rows else []
    variables = sorted({k for row in rows for k in row["variables"]})
    collected = sorted({k for row in rows for k in row["collected"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = [f"variables.{k}" if k in fixed else k for k in variables]  # "status" is taken
    writer.writerow([*fixed, *names, *(f"collected.{k}" for k in collected)])
    for row in rows:
        values = [" ".join(v) if isinstance(v, list) else v for v in (row[k] for k in fixed)]
        writer.writerow(
            [
                *("" if v is None else v for v in values),
                *(row["variables"].get(k, "") for k in variables),
                *(_cell(row["collected"].get(k)) for k in collected),
            ]
        )
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)
