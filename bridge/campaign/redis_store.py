"""Campaigns shared by several bridge instances through Redis: a :class:`CampaignStore` and
:class:`Limits` (see store.py) whose state every instance sees.

Due attempts are a sorted set per campaign (contact id scored by due time). A claim is one Lua
script that removes the contact from that set, counts the attempt and records it as started by
the claiming instance, all or nothing, so two instances can never take the same attempt; an
attempt is finished only by the script that removes it from its instance's in-flight set, so it
ends once. Calling hours (zone rules) are checked in Python before the claim: a contact outside
its hours is moved to its next window with ``ZADD XX GT`` (only while still pending).

Limits are judged on the Redis server's clock (``TIME`` inside the scripts), the one clock all
instances share. A concurrency slot is a lease (a sorted-set member scored by its expiry) that
the holding instance renews every few seconds: if the instance dies, its slots free themselves
after :data:`LEASE_S`; if it stays away for :data:`ALIVE_S`, the others recover its attempts in
flight as "interrupted" (as its own restart would), so the campaign still finishes. Starts are
spaced ``1 / calls_per_second`` apart by one shared "next start" time, with the same catch-up
rule as :class:`LocalLimits`.

Durability is Redis's: run it with ``appendonly yes`` (and ``appendfsync always`` to keep the
"attempt started before the INVITE" promise across a power cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from bridge.campaign.calendar import next_open, parse_window
from bridge.campaign.model import (
    OUTCOMES,
    Attempt,
    Campaign,
    CampaignRules,
    CampaignState,
    Contact,
    ContactStatus,
)
from bridge.campaign.store import dnc_key
from bridge.config import ConfigError

log = logging.getLogger(__name__)

PREFIX = "bridge:campaign:"
LEASE_S = 15.0  # a dead instance's concurrency slots free themselves after this
RENEW_S = LEASE_S / 3  # how often leases and "alive" marks are renewed
# An instance not seen for this long is dead: its attempts in flight are recovered by the others
# (as its own restart would), so a campaign finishes even if a machine never comes back.
ALIVE_S = 60.0
# How soon to ask again when every slot is taken: a slot this process frees wakes its dialer at
# once, one freed by another instance is seen this late.
SLOT_POLL_S = 0.1
CLAIM_BATCH = 50  # due contacts read per round of claim_due when calling hours apply

# KEYS: campaign, progress, due, attempts, counts, in-flight set of the instance.
# ARGV: now, instance, campaign id, contact ids... Returns {id, number, id, number, ...}.
_CLAIM = """
local now = tonumber(ARGV[1])
local claimed = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local due = redis.call('ZSCORE', KEYS[3], id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', KEYS[3], id)
    local p = cjson.decode(redis.call('HGET', KEYS[2], id))
    p.attempts = p.attempts + 1
    p.status = 'in-progress'
    redis.call('HSET', KEYS[2], id, cjson.encode(p))
    local attempt = {contact_id = tonumber(id), number = p.attempts, started_at = ARGV[1],
                     instance = ARGV[2]}
    redis.call('HSET', KEYS[4], id .. ':' .. p.attempts, cjson.encode(attempt))
    redis.call('SADD', KEYS[6], ARGV[3] .. '|' .. id .. '|' .. p.attempts)
    redis.call('HINCRBY', KEYS[5], 'pending', -1)
    redis.call('HINCRBY', KEYS[5], 'in-progress', 1)
    redis.call('HINCRBY', KEYS[1], 'calls_started', 1)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = p.attempts
  end
end
if #claimed > 0 then redis.call('HSET', KEYS[1], 'updated_at', ARGV[1]) end
return claimed
"""

# KEYS: as _CLAIM. ARGV: contact id, attempt field, in-flight member, attempt JSON, outcome,
# next due ('' when the contact is done), ended at. Returns 1, or 0 if not in flight.
_FINISH = """
if redis.call('SREM', KEYS[6], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
local p = cjson.decode(redis.call('HGET', KEYS[2], ARGV[1]))
p.outcome = ARGV[5]
redis.call('HINCRBY', KEYS[5], 'in-progress', -1)
if ARGV[6] == '' then
  p.status = 'done'
  redis.call('HINCRBY', KEYS[5], ARGV[5], 1)
else
  p.status = 'pending'
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'pending', 1)
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(p))
redis.call('HSET', KEYS[1], 'updated_at', ARGV[7])
return 1
"""

# KEYS: slots, next start. ARGV: max concurrent, start interval, lease id, lease seconds,
# slot poll. Returns '0' when a slot and a start were taken, else the seconds to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local interval = tonumber(ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return ARGV[5] end
local due = tonumber(redis.call('GET', KEYS[2]) or now)
if now < due then return string.format('%.6f', due - now) end
redis.call('SET', KEYS[2], string.format('%.6f', math.max(due + interval, now)),
           'PX', math.ceil(interval * 1000) + 60000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
return '0'
"""

# KEYS: slots. ARGV: lease seconds, lease ids... Pushes the leases' expiry on (live ones only).
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
return 0
"""


class _Keys:
    """Key names of one campaign."""

    def __init__(self, prefix: str, campaign_id: str) -> None:
        base = f"{prefix}c:{campaign_id}"
        self.campaign = base
        self.contacts = f"{base}:contacts"  # contact id -> contact JSON
        self.progress = f"{base}:progress"  # contact id -> {status, attempts, outcome}
        self.due = f"{base}:due"  # pending contact ids by due time
        self.attempts = f"{base}:attempts"  # "contact:number" -> attempt JSON
        self.counts = f"{base}:counts"  # pending, in-progress, outcomes of done contacts
        self.slots = f"{base}:slots"  # concurrency leases by expiry
        self.next_start = f"{base}:next-start"  # earliest time the next call may start

    def scripted(self, inflight: str) -> list[str]:
        return [self.campaign, self.progress, self.due, self.attempts, self.counts, inflight]


class RedisStore:
    """:class:`CampaignStore` in Redis, shared by every instance that opens the same server."""

    def __init__(
        self, client: redis.Redis, limits: RedisLimits, instance: str, prefix: str = PREFIX
    ) -> None:
        self.client = client
        self.limits = limits
        self.instance = instance
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._rules: dict[str, CampaignRules] = {}  # never change after creation
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Keep this instance marked alive and recover dead instances' attempts in flight."""
        self._watcher = asyncio.create_task(self._watch(), name="redis-instances")

    async def _watch(self) -> None:
        instances = f"{self.prefix}instances"
        while True:
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.set(self._alive(self.instance), "1", px=int(ALIVE_S * 1000))
                    pipe.sadd(instances, self.instance)
                    pipe.smembers(instances)
                    *_, seen = await pipe.execute()
                for other in sorted(seen - {self.instance}):
                    if await self.client.exists(self._alive(other)):
                        continue
                    recovered = await self.recover(other, time.time())
                    if recovered:
                        log.warning(
                            "instance %s gone for %.0f s: %d of its attempts marked interrupted",
                            other, ALIVE_S, recovered,
                        )  # fmt: skip
                    if not await self.client.exists(self._inflight(other)):
                        await self.client.srem(instances, other)
            except RedisError as exc:  # Redis away for a moment: the next round tries again
                log.warning("campaign store: %s", exc)
            await asyncio.sleep(RENEW_S)

    def _alive(self, instance: str) -> str:
        return f"{self.prefix}alive:{instance}"

    def _keys(self, campaign_id: str) -> _Keys:
        return _Keys(self.prefix, campaign_id)

    def _inflight(self, instance: str) -> str:
        return f"{self.prefix}inflight:{instance}"

    # --- campaigns ----------------------------------------------------------------------------

    async def create(self, campaign: Campaign, contacts: list[Contact], now: float) -> None:
        keys = self._keys(campaign.id)
        last = int(await self.client.incrby(f"{self.prefix}contact-seq", max(len(contacts), 1)))
        for offset, contact in enumerate(contacts):
            contact.id = last - len(contacts) + 1 + offset
            contact.campaign_id = campaign.id
        spec = {k: v for k, v in campaign.as_dict().items() if k != "state"}
        fresh = json.dumps({"status": "pending", "attempts": 0, "outcome": None})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.campaign,
                mapping={
                    "spec": json.dumps(spec),
                    "state": campaign.state,
                    "updated_at": repr(now),
                    "calls_started": 0,
                },
            )
            for start in range(0, len(contacts), 1000):
                chunk = contacts[start : start + 1000]
                pipe.hset(keys.contacts, mapping={_member(c.id): _contact_json(c) for c in chunk})
                pipe.hset(keys.progress, mapping={_member(c.id): fresh for c in chunk})
                pipe.zadd(keys.due, {_member(c.id): now for c in chunk})
                pipe.hset(
                    f"{self.prefix}owner", mapping={_member(c.id): campaign.id for c in chunk}
                )
            counts = dict.fromkeys(("pending", "in-progress", *OUTCOMES), 0)
            pipe.hset(keys.counts, mapping={**counts, "pending": len(contacts)})
            pipe.zadd(f"{self.prefix}list", {campaign.id: campaign.created_at})
            await pipe.execute()

    async def set_state(self, campaign_id: str, state: CampaignState, now: float) -> None:
        keys = self._keys(campaign_id)
        if await self.client.exists(keys.campaign):
            await self.client.hset(keys.campaign, mapping={"state": state, "updated_at": repr(now)})

    async def get(self, campaign_id: str) -> Campaign | None:
        spec, state = await self.client.hmget(self._keys(campaign_id).campaign, "spec", "state")
        return None if spec is None else _campaign(spec, state)

    async def list(self) -> list[Campaign]:
        ids = await self.client.zrange(f"{self.prefix}list", 0, -1)
        async with self.client.pipeline(transaction=False) as pipe:
            for campaign_id in ids:
                pipe.hmget(self._keys(campaign_id).campaign, "spec", "state")
            rows = await pipe.execute()
        return [_campaign(spec, state) for spec, state in rows if spec is not None]

    async def _rules_of(self, campaign_id: str) -> CampaignRules | None:
        if campaign_id not in self._rules:
            campaign = await self.get(campaign_id)
            if campaign is None:
                return None
            self._rules[campaign_id] = campaign.rules
        return self._rules[campaign_id]

    # --- attempts -----------------------------------------------------------------------------

    async def claim_due(
        self, campaign_id: str, now: float, limit: int, instance: str
    ) -> list[tuple[Contact, int]]:
        rules = await self._rules_of(campaign_id)
        if rules is None:
            return []
        keys = self._keys(campaign_id)
        windows = [parse_window(w) for w in rules.calling_hours]
        # Without calling hours every due contact can be taken; with them, look further ahead
        # so a run of contacts outside their hours is moved on in few rounds.
        count = CLAIM_BATCH if windows else limit
        claimed: list[tuple[Contact, int]] = []
        while len(claimed) < limit:
            ids = await self.client.zrangebyscore(keys.due, "-inf", now, 0, count)
            if not ids:
                break
            found = await self.client.hmget(keys.contacts, ids)
            candidates: dict[str, Contact] = {}
            for contact_id, raw in zip(ids, found, strict=True):
                contact = _contact(raw, campaign_id)
                opens = next_open(windows, contact.timezone, now)
                if opens > now:  # outside its calling hours: its next window, if still pending
                    await self.client.zadd(keys.due, {contact_id: opens}, xx=True, gt=True)
                elif len(claimed) + len(candidates) < limit:
                    candidates[contact_id] = contact
            if candidates:
                taken = await self._claim(
                    keys=keys.scripted(self._inflight(instance)),
                    args=[repr(now), instance, campaign_id, *candidates],
                )
                for contact_id, number in zip(taken[::2], taken[1::2], strict=True):
                    claimed.append((candidates[contact_id], int(number)))
            if len(ids) < count and not candidates:
                break
        return claimed

    async def finish_attempt(self, attempt: Attempt) -> None:
        campaign_id = await self.client.hget(f"{self.prefix}owner", _member(attempt.contact_id))
        if campaign_id is not None:
            await self._end(campaign_id, attempt)

    async def _end(self, campaign_id: str, attempt: Attempt) -> bool:
        """Close ``attempt`` if it is still in flight (atomically); whether it was."""
        assert attempt.outcome is not None and attempt.ended_at is not None
        rules = await self._rules_of(campaign_id)
        keys = self._keys(campaign_id)
        member = _member(attempt.contact_id)
        field = f"{member}:{attempt.number}"
        raw = await self.client.hget(keys.attempts, field)
        if rules is None or raw is None:
            return False
        started = json.loads(raw)  # when and by whom: the claim's record wins
        ended = {
            **attempt.as_dict(),
            "started_at": float(started["started_at"]),
            "instance": started["instance"],
        }
        delay = rules.retry_delay(attempt.outcome, attempt.number)
        done = await self._finish(
            keys=keys.scripted(self._inflight(started["instance"])),
            args=[
                member,
                field,
                f"{campaign_id}|{member}|{attempt.number}",
                json.dumps(ended),
                attempt.outcome,
                "" if delay is None else repr(attempt.ended_at + delay),
                repr(attempt.ended_at),
            ],
        )
        return bool(done)

    async def recover(self, instance: str, now: float) -> int:
        recovered = 0
        for member in await self.client.smembers(self._inflight(instance)):
            campaign_id, contact_id, number = member.split("|")
            attempt = Attempt(
                int(contact_id), int(number), now, now, "interrupted", instance=instance
            )
            recovered += await self._end(campaign_id, attempt)
        return recovered

    async def next_due(self, campaign_id: str) -> float | None:
        first = await self.client.zrange(self._keys(campaign_id).due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def counts(self, campaign_id: str) -> dict[str, int]:
        stored = await self.client.hgetall(self._keys(campaign_id).counts)
        counts = dict.fromkeys(("pending", "in-progress", *OUTCOMES), 0)
        counts.update({key: int(value) for key, value in stored.items()})
        return counts

    async def calls_started(self, campaign_id: str) -> int:
        return int(await self.client.hget(self._keys(campaign_id).campaign, "calls_started") or 0)

    async def updated_at(self, campaign_id: str) -> float:
        return float(await self.client.hget(self._keys(campaign_id).campaign, "updated_at") or 0)

    async def contacts(
        self, campaign_id: str
    ) -> list[tuple[Contact, ContactStatus, float | None, list[Attempt]]]:
        keys = self._keys(campaign_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.contacts)
            pipe.hgetall(keys.progress)
            pipe.zrange(keys.due, 0, -1, withscores=True)
            pipe.hgetall(keys.attempts)
            contacts, progress, due, attempts = await pipe.execute()
        by_contact: dict[int, list[Attempt]] = defaultdict(list)
        for raw in attempts.values():
            attempt = _attempt(raw)
            by_contact[attempt.contact_id].append(attempt)
        due_at = {int(contact_id): score for contact_id, score in due}
        rows = []
        for contact_id in sorted(contacts, key=int):
            contact = _contact(contacts[contact_id], campaign_id)
            status = json.loads(progress[contact_id])["status"]
            tried = sorted(by_contact[contact.id], key=lambda a: a.number)
            rows.append((contact, status, due_at.get(contact.id), tried))
        return rows

    # --- do not call --------------------------------------------------------------------------

    async def add_dnc(self, numbers: list[str]) -> int:
        keys = {dnc_key(n) for n in numbers} - {""}
        return int(await self.client.sadd(f"{self.prefix}dnc", *keys)) if keys else 0

    async def is_dnc(self, number_or_uri: str) -> bool:
        return bool(await self.client.sismember(f"{self.prefix}dnc", dnc_key(number_or_uri)))

    async def close(self) -> None:
        """Stop; this instance's attempts in flight wait for its restart (or for :data:`ALIVE_S`
        to pass, then another instance recovers them)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.limits.close()
        await self.client.aclose()


class RedisLimits:
    """:class:`Limits` shared through Redis. ``acquire`` ignores its ``now`` (the injected
    dialer clock of one process) for the server's clock; this instance's leases are renewed by
    a background task while held."""

    shared = True

    def __init__(self, client: redis.Redis, instance: str, prefix: str = PREFIX) -> None:
        self.client = client
        self.instance = instance
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._leases: dict[str, list[str]] = defaultdict(list)
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, campaign_id: str, rules: CampaignRules, now: float) -> float:
        keys = _Keys(self.prefix, campaign_id)
        lease = f"{self.instance}:{uuid.uuid4().hex[:12]}"
        wait = float(
            await self._acquire(
                keys=[keys.slots, keys.next_start],
                args=[
                    rules.max_concurrent,
                    repr(1.0 / rules.calls_per_second),
                    lease,
                    repr(LEASE_S),
                    repr(SLOT_POLL_S),
                ],
            )
        )
        if wait == 0:
            self._leases[campaign_id].append(lease)
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew_leases(), name="redis-leases")
        return wait

    async def release(self, campaign_id: str) -> None:
        leases = self._leases.get(campaign_id)
        if leases:
            await self.client.zrem(_Keys(self.prefix, campaign_id).slots, leases.pop())

    async def _renew_leases(self) -> None:
        while any(self._leases.values()):
            await asyncio.sleep(RENEW_S)
            for campaign_id, leases in list(self._leases.items()):
                if not leases:
                    continue
                try:
                    await self._renew(
                        keys=[_Keys(self.prefix, campaign_id).slots], args=[LEASE_S, *leases]
                    )
                except RedisError as exc:  # the next round tries again, before they expire
                    log.warning("cannot renew campaign %s slots: %s", campaign_id, exc)

    async def close(self) -> None:
        """Stop renewing and give back every slot this instance holds."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for campaign_id, leases in self._leases.items():
            if leases:
                with contextlib.suppress(RedisError):
                    await self.client.zrem(_Keys(self.prefix, campaign_id).slots, *leases)
        self._leases.clear()


async def open_store(url: str, instance: str) -> tuple[RedisStore, RedisLimits]:
    """Connect to ``url`` (``redis://host:port/db``); ConfigError when it does not answer."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        parts = urlsplit(url)  # named without its password
        where = f"{parts.hostname}:{parts.port or 6379}"
        raise ConfigError(f"campaigns.redis_url: cannot reach {where}: {exc}") from None
    limits = RedisLimits(client, instance)
    store = RedisStore(client, limits, instance)
    store.start()
    return store, limits


def _member(contact_id: int) -> str:
    """A contact's name in the keys: zero-padded, so members of equal due time (a sorted set
    orders those by name) come in import order."""
    return f"{contact_id:012d}"


def _contact_json(contact: Contact) -> str:
    return json.dumps(
        {
            "id": contact.id,
            "line": contact.line,
            "to": contact.to,
            "timezone": contact.timezone,
            "variables": contact.variables,
        }
    )


def _contact(raw: str, campaign_id: str) -> Contact:
    data = json.loads(raw)
    return Contact(
        data["id"], campaign_id, data["line"], data["to"], data["timezone"], data["variables"]
    )


def _campaign(spec: str, state: str) -> Campaign:
    data: dict[str, Any] = json.loads(spec)
    return Campaign(
        data["id"],
        data["name"],
        data["dialplan"],
        data["caller_id"],
        CampaignRules.from_dict(data["rules"]),
        state,  # type: ignore[arg-type]
        data["created_at"],
    )


def _attempt(raw: str) -> Attempt:
    data = json.loads(raw)
    return Attempt(
        int(data["contact_id"]),
        int(data["number"]),
        float(data["started_at"]),
        data.get("ended_at"),
        data.get("outcome"),
        data.get("sip_status"),
        data.get("duration_s"),
        data.get("record_id"),
        data.get("collected") or {},
        data.get("amd"),
        data["instance"],
    )
