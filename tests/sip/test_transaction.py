"""Transaction timers, driven by a fake clock."""

from __future__ import annotations

import pytest

from bridge.sip.message import Request, Response, parse_message
from bridge.sip.transaction import (
    Address,
    ClientInviteTransaction,
    ClientTransaction,
    ServerInviteTransaction,
    ServerTransaction,
    State,
    TimerConfig,
    Transaction,
    response_to,
)
from tests.sip.messages import request

CONFIG = TimerConfig(t1=0.5, t2=4.0, t4=5.0)
UDP = Address("udp", "127.0.0.1", 5070)
TCP = Address("tcp", "127.0.0.1", 5070)


def _request(method: str = "INVITE") -> Request:
    message = parse_message(request(method))
    assert isinstance(message, Request)
    return message


def _run(transaction: Transaction, until: float) -> list[float]:
    """Fire timers up to ``until``; return the times at which something was sent."""
    sent: list[float] = []
    transaction.outbox.clear()
    while (deadline := transaction.deadline) is not None and deadline <= until:
        transaction.on_timer(deadline)
        sent += [deadline] * len(transaction.outbox)
        transaction.outbox.clear()
    return sent


def test_server_invite_sends_trying_and_absorbs_retransmissions() -> None:
    invite = _request()
    tx = ServerInviteTransaction(invite, UDP, CONFIG, 0.0)
    assert [m.status for m in tx.outbox if isinstance(m, Response)] == [100]
    tx.outbox.clear()
    tx.receive_request(invite, 0.1)
    assert [m.status for m in tx.outbox if isinstance(m, Response)] == [100]


@pytest.mark.parametrize(
    ("status", "remote", "resends", "state_after"),
    [
        # Timer G doubles to T2 until H (64*T1 = 32 s) fires.
        (486, UDP, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5], State.TERMINATED),
        (486, TCP, [], State.TERMINATED),
        (200, UDP, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5], State.TERMINATED),
        (200, TCP, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5], State.TERMINATED),
    ],
)
def test_server_invite_final_response_retransmitted_until_timer_h(
    status: int, remote: Address, resends: list[float], state_after: State
) -> None:
    invite = _request()
    tx = ServerInviteTransaction(invite, remote, CONFIG, 0.0)
    tx.respond(response_to(invite, status, to_tag="t"), 0.0)
    assert _run(tx, 100.0) == resends
    assert tx.state is state_after and tx.timed_out


def test_server_invite_ack_for_error_confirms_then_timer_i() -> None:
    invite = _request()
    tx = ServerInviteTransaction(invite, UDP, CONFIG, 0.0)
    tx.respond(response_to(invite, 487, to_tag="t"), 0.0)
    tx.receive_request(_request("ACK"), 0.2)
    assert tx.state is State.CONFIRMED and tx.deadline == pytest.approx(5.2)
    assert _run(tx, 10.0) == []
    assert tx.terminated and not tx.timed_out


def test_server_invite_2xx_stops_on_ack() -> None:
    invite = _request()
    tx = ServerInviteTransaction(invite, UDP, CONFIG, 0.0)
    tx.respond(response_to(invite, 200, to_tag="t"), 0.0)
    assert _run(tx, 2.0) == [0.5, 1.5]
    tx.ack_received()
    assert tx.terminated and not tx.timed_out


@pytest.mark.parametrize(("remote", "linger"), [(UDP, 32.0), (TCP, None)])
def test_server_non_invite_timer_j(remote: Address, linger: float | None) -> None:
    bye = _request("BYE")
    tx = ServerTransaction(bye, remote, CONFIG, 0.0)
    tx.respond(response_to(bye, 200), 0.0)
    tx.receive_request(bye, 1.0)  # a retransmission gets the same response
    assert [m.status for m in tx.outbox if isinstance(m, Response)] == [200, 200]
    assert tx.deadline == linger


@pytest.mark.parametrize(
    ("remote", "resends"),
    [
        (UDP, [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]),  # timer A doubles, B fires at 32 s
        (TCP, []),
    ],
)
def test_client_invite_timer_a_and_b(remote: Address, resends: list[float]) -> None:
    tx = ClientInviteTransaction(_request(), remote, CONFIG, 0.0)
    assert _run(tx, 100.0) == resends
    assert tx.timed_out


def test_client_invite_acks_error_and_absorbs_retransmission() -> None:
    invite = _request()
    tx = ClientInviteTransaction(invite, UDP, CONFIG, 0.0)
    tx.outbox.clear()
    assert tx.receive_response(response_to(invite, 180, to_tag="t"), 0.1) is not None
    busy = response_to(invite, 486, to_tag="t")
    assert tx.receive_response(busy, 0.2) is busy
    assert tx.receive_response(busy, 0.3) is None
    acks = [m for m in tx.outbox if isinstance(m, Request)]
    assert [a.method for a in acks] == ["ACK", "ACK"]
    assert acks[0].top_via.branch == invite.top_via.branch and acks[0].to.tag == "t"
    assert tx.deadline == pytest.approx(32.2)  # timer D


def test_client_invite_passes_2xx_retransmissions_up() -> None:
    invite = _request()
    tx = ClientInviteTransaction(invite, UDP, CONFIG, 0.0)
    ok = response_to(invite, 200, to_tag="t")
    assert tx.receive_response(ok, 0.1) is ok
    assert tx.receive_response(ok, 0.6) is ok
    assert tx.state is State.ACCEPTED


@pytest.mark.parametrize(
    ("provisional_at", "resends"),
    [
        (None, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]),
        # After a 1xx, E keeps firing every T2 (the pending 1.5 s shot re-arms at T2).
        (0.6, [0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]),
    ],
)
def test_client_non_invite_timer_e_and_f(
    provisional_at: float | None, resends: list[float]
) -> None:
    bye = _request("BYE")
    tx = ClientTransaction(bye, UDP, CONFIG, 0.0)
    sent = _run(tx, provisional_at or 0.0)
    if provisional_at is not None:
        tx.receive_response(response_to(bye, 100), provisional_at)
    assert sent + _run(tx, 100.0) == resends
    assert tx.timed_out and tx.terminated


def test_client_non_invite_final_then_timer_k() -> None:
    bye = _request("BYE")
    tx = ClientTransaction(bye, UDP, CONFIG, 0.0)
    ok = response_to(bye, 200)
    assert tx.receive_response(ok, 0.1) is ok
    assert tx.receive_response(ok, 0.2) is None
    assert tx.deadline == pytest.approx(5.1)
