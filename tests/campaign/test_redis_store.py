"""The Redis campaign store and limits against a real redis-server on loopback.

The store-level behaviour tests of the SQLite store run here again on the Redis store (same
protocol, same expectations); then what only sharing adds: several clients claiming at once,
global concurrency slots whose leases expire with a dead instance, the shared start rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bridge.campaign import redis_store
from bridge.campaign.model import CampaignRules
from bridge.campaign.redis_store import RedisLimits, RedisStore, open_store
from bridge.config import ConfigError
from tests.campaign import test_store as shared
from tests.campaign.running import until
from tests.campaign.test_store import T0, campaign, contacts
from tests.peers.redis_server import redis_server

pytestmark = [pytest.mark.peer, pytest.mark.timeout(60)]

# The SQLite store's behaviour tests, run with this module's ``store`` fixture.
test_claims_follow_import_order_and_record_the_attempt = (
    shared.test_claims_follow_import_order_and_record_the_attempt
)
test_retry_policy_schedules_the_next_attempt = shared.test_retry_policy_schedules_the_next_attempt
test_answered_is_final_and_a_second_finish_changes_nothing = (
    shared.test_answered_is_final_and_a_second_finish_changes_nothing
)
test_contacts_outside_calling_hours_are_deferred_not_claimed = (
    shared.test_contacts_outside_calling_hours_are_deferred_not_claimed
)
test_recover_interrupts_only_this_instances_attempts = (
    shared.test_recover_interrupts_only_this_instances_attempts
)
test_do_not_call_matches_numbers_and_uris = shared.test_do_not_call_matches_numbers_and_uris


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    async with redis_server() as url:
        yield url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    opened, _ = await open_store(redis_url, "a")
    yield opened
    await opened.close()


async def test_concurrent_claims_never_share_an_attempt(redis_url: str) -> None:
    """Three instances (own connections) draining one campaign at once."""
    stores = [(await open_store(redis_url, f"i{k}"))[0] for k in range(3)]
    await stores[0].create(campaign(), contacts(150), T0)

    async def drain(store: RedisStore, name: str) -> list[tuple[int, int]]:
        got = []
        while batch := await store.claim_due("c1", T0, 2, name):
            got += [(c.id, n) for c, n in batch]
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(drain(s, f"i{k}") for k, s in enumerate(stores)))
    union = [claim for result in results for claim in result]
    assert len(union) == len(set(union)) == 150
    assert sum(1 for result in results if result) >= 2, "the claims did interleave"
    counts = await stores[1].counts("c1")
    assert (counts["pending"], counts["in-progress"]) == (0, 150)
    assert await stores[2].calls_started("c1") == 150
    for store in stores:
        await store.close()


async def test_equal_due_times_keep_import_order(store: RedisStore) -> None:
    await store.create(campaign(), contacts(25), T0)
    claimed = await store.claim_due("c1", T0, 25, "a")
    assert [c.line for c, _ in claimed] == list(range(2, 27))


async def test_a_second_instance_sees_campaigns_and_states(redis_url: str) -> None:
    first, _ = await open_store(redis_url, "a")
    second, _ = await open_store(redis_url, "b")
    await first.create(campaign("c1"), contacts(2), T0)
    await first.create(campaign("c2", max_concurrent=4), contacts(1), T0 + 1)
    await second.set_state("c1", "paused", T0 + 5)
    assert [(c.id, c.state) for c in await first.list()] == [("c1", "paused"), ("c2", "running")]
    found = await first.get("c2")
    assert found is not None and found.rules.max_concurrent == 4
    assert await first.get("nope") is None
    assert await second.updated_at("c1") == T0 + 5
    # contact ids are unique across campaigns, so an attempt names its campaign
    ids = [c.id for c, *_ in await second.contacts("c1") + await second.contacts("c2")]
    assert len(set(ids)) == 3
    await first.close()
    await second.close()


async def test_a_dead_instances_attempts_are_recovered_by_the_others(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "ALIVE_S", 1.0)
    monkeypatch.setattr(redis_store, "RENEW_S", 0.2)
    dead, _ = await open_store(redis_url, "dead")
    busy, _ = await open_store(redis_url, "busy")
    await dead.create(campaign(retry_delays_s={"interrupted": 0.0}), contacts(3), T0)
    lost = await dead.claim_due("c1", T0, 2, "dead")
    (kept,) = await busy.claim_due("c1", T0, 1, "busy")
    assert dead._watcher is not None
    dead._watcher.cancel()  # killed: no more "alive" marks, no goodbye
    await dead.client.aclose()

    async def recovered() -> bool:
        return (await busy.counts("c1"))["in-progress"] == 1

    await until(recovered, timeout=5, interval=0.1)
    rows = {c.id: (status, a) for c, status, _, a in await busy.contacts("c1")}
    for contact, _ in lost:
        status, attempts = rows[contact.id]
        assert status == "pending" and [a.outcome for a in attempts] == ["interrupted"]
    assert rows[kept[0].id][0] == "in-progress"  # a live instance's call is left alone
    await busy.close()


def rules(max_concurrent: int, cps: float) -> CampaignRules:
    return CampaignRules(max_concurrent=max_concurrent, calls_per_second=cps)


async def test_slots_are_global_and_free_when_released(redis_url: str) -> None:
    (sa, a), (sb, b) = await open_store(redis_url, "a"), await open_store(redis_url, "b")
    fast = rules(3, 100.0)
    taken = 0
    for limits in (a, b, a, b, a):
        while (wait := await limits.acquire("c1", fast, 0.0)) > 0 and wait < 0.05:
            await asyncio.sleep(wait)  # a start token, not a slot
        taken += wait == 0
    assert taken == 3
    assert await b.acquire("c1", fast, 0.0) == redis_store.SLOT_POLL_S
    await b.release("c1")
    await asyncio.sleep(0.02)
    assert await a.acquire("c1", fast, 0.0) == 0
    await sa.close()
    await sb.close()


async def test_a_dead_instances_slots_expire(redis_url: str, monkeypatch) -> None:
    monkeypatch.setattr(redis_store, "LEASE_S", 1.0)
    monkeypatch.setattr(redis_store, "RENEW_S", 0.3)
    alive_store, alive = await open_store(redis_url, "a")
    dead_store, dead = await open_store(redis_url, "dead")
    one = rules(1, 100.0)
    assert await alive.acquire("c1", one, 0.0) == 0
    await asyncio.sleep(1.5)  # held past the lease: renewed, still taken
    assert await dead.acquire("c1", one, 0.0) > 0
    await alive.release("c1")
    await asyncio.sleep(0.02)
    assert await dead.acquire("c1", one, 0.0) == 0
    # The holder dies without releasing (no renewal, no close): the slot comes back.
    assert dead._renewer is not None
    dead._renewer.cancel()
    # Let the cancellation land before closing: a command cut off mid-flight can leave the
    # client's connection half-read, and closing it then may never return.
    await asyncio.gather(dead._renewer, return_exceptions=True)
    await asyncio.wait_for(dead_store.client.aclose(), 5)
    assert await alive.acquire("c1", one, 0.0) > 0
    await asyncio.sleep(1.2)
    assert await alive.acquire("c1", one, 0.0) == 0
    await alive_store.close()


async def test_start_rate_is_shared(redis_url: str) -> None:
    """Two instances competing for 20 starts/s get them 50 ms apart, not 40 starts/s."""
    (sa, a), (sb, b) = await open_store(redis_url, "a"), await open_store(redis_url, "b")
    wide = rules(1000, 20.0)
    starts: list[float] = []

    async def take(limits: RedisLimits) -> None:
        while len(starts) < 21:
            wait = await limits.acquire("c1", wide, 0.0)
            if wait == 0:
                starts.append(time.monotonic())
            else:
                await asyncio.sleep(wait)

    await asyncio.gather(take(a), take(b))
    starts.sort()
    rate = (len(starts) - 2) / (starts[-1] - starts[1])  # after the first (catch-up) pair
    assert 17.0 <= rate <= 21.0, rate
    await sa.close()
    await sb.close()


async def test_unreachable_server_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"campaigns.redis_url: cannot reach 127.0.0.1:1"):
        await open_store("redis://:secret@127.0.0.1:1/0", "a")
