"""The user agent core, driven sans-I/O: bytes in, bytes and events out, time passed in."""

from __future__ import annotations

import pytest

from bridge.sip.agent import AgentConfig, UserAgent
from bridge.sip.auth import DigestVerifier, authorize
from bridge.sip.events import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
    DtmfInfo,
    IncomingCall,
    MediaUpdated,
    TransferProgress,
)
from bridge.sip.message import Request, Response, parse_message
from bridge.sip.ports import PortAllocator
from bridge.sip.protection import AllowList, RateLimiter
from bridge.sip.transaction import Address, response_to
from tests.sip.messages import OFFER_SDP, request

PEER = Address("udp", "127.0.0.1", 5070)


def _agent(**kwargs: object) -> UserAgent:
    return UserAgent(AgentConfig(PortAllocator(30000, 30010), port=5062, **kwargs))  # type: ignore[arg-type]


def _sent(agent: UserAgent) -> list[Request | Response]:
    return [parse_message(data) for data, _ in agent.data_to_send()]


def _statuses(agent: UserAgent) -> list[int]:
    return [m.status for m in _sent(agent) if isinstance(m, Response)]


def _ring(agent: UserAgent, **kwargs: object) -> IncomingCall:
    agent.receive(request(body=OFFER_SDP, **kwargs), PEER, 0.0)  # type: ignore[arg-type]
    assert _statuses(agent) == [100, 180]
    (event,) = agent.events()
    assert isinstance(event, IncomingCall)
    return event


def _established(agent: UserAgent) -> str:
    """An answered and ACKed inbound call; returns our To-tag."""
    call = _ring(agent)
    agent.answer(call.call_id, 0.1)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.status == 200
    tag = ok.to.tag or ""
    agent.receive(request("ACK", branch="z9hG4bK-ack", to_tag=tag), PEER, 0.2)
    assert agent.deadline is None or agent.deadline > 30
    return tag


def test_incoming_call_offer_answer() -> None:
    agent = _agent()
    call = _ring(agent)
    assert (call.request_uri_user, call.remote_rtp_addr, call.local_rtp_port) == (
        "bot",
        ("127.0.0.1", 40000),
        30000,
    )
    assert call.media.codec == "PCMU" and call.media.telephone_event_pt == 101
    agent.answer(call.call_id, 0.1)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.content_type == "application/sdp"
    assert b"m=audio 30000 RTP/AVP 0 101" in ok.body and ok.contact is not None


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (request().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 483, ""),
        (request("FROBNICATE"), 501, ""),
        (request("SUBSCRIBE"), 405, ""),
        (request("BYE", to_tag="nope"), 481, ""),
        (request("BYE"), 481, ""),
        (request("INFO", to_tag="nope"), 481, ""),
        (request(), 488, ""),  # no offer: late offer is not supported yet
        (request(body="v=0\r\nm=audio 1 RTP/AVP 9\r\nc=IN IP4 1.2.3.4\r\n"), 488, ""),
        (request(body="hello", content_type="text/plain"), 415, ""),
        (request("OPTIONS"), 200, ""),
    ],
)
def test_refusals(data: bytes, status: int, reason: str) -> None:
    agent = _agent()
    agent.receive(data, PEER, 0.0)
    replies = [m for m in _sent(agent) if isinstance(m, Response) and m.status != 100]
    assert [r.status for r in replies] == [status]
    assert reason in replies[0].reason
    if status in (405, 501) or data.startswith(b"OPTIONS"):
        assert "INVITE" in (replies[0].headers.get_all("Allow") or [""])
    assert agent.config.rtp_ports.in_use == 0


@pytest.mark.parametrize("header", [b"Call-ID", b"Via", b"CSeq", b"From", b"Max-Forwards"])
def test_missing_header_gets_400_naming_it(header: bytes) -> None:
    agent = _agent()
    lines = request().split(b"\r\n")
    agent.receive(b"\r\n".join(x for x in lines if not x.startswith(header + b":")), PEER, 0.0)
    ((data, _),) = agent.data_to_send()
    assert data.startswith(b"SIP/2.0 400 Missing " + header + b" header\r\n")


@pytest.mark.parametrize("data", [b"\xff\xfe\x00garbage", b"HTTP/1.1 200 OK\r\n\r\n", b""])
def test_garbage_is_dropped(data: bytes) -> None:
    agent = _agent()
    agent.receive(data, PEER, 0.0)
    assert agent.data_to_send() == [] and agent.events() == []


def test_retransmitted_invite_is_absorbed() -> None:
    agent = _agent()
    _ring(agent)
    agent.receive(request(body=OFFER_SDP), PEER, 0.3)
    assert _statuses(agent) == [180] and agent.events() == []


@pytest.mark.parametrize(("busy_status", "retry_after"), [(486, None), (503, "30")])
def test_capacity(busy_status: int, retry_after: str | None) -> None:
    agent = _agent(max_calls=1, busy_status=busy_status)
    _ring(agent)
    agent.receive(request(body=OFFER_SDP, call_id="call-2", branch="z9hG4bK-2"), PEER, 0.0)
    replies = [m for m in _sent(agent) if isinstance(m, Response) and m.status != 100]
    assert [r.status for r in replies] == [busy_status]
    assert replies[0].headers.get("Retry-After") == retry_after


def test_cancel_before_answer() -> None:
    agent = _agent()
    call = _ring(agent)
    agent.receive(request("CANCEL"), PEER, 0.5)
    assert _statuses(agent) == [200, 487]
    assert agent.events() == [CallEnded(call.call_id, "cancelled")]
    assert agent.config.rtp_ports.in_use == 0
    agent.receive(request("ACK"), PEER, 0.6)  # ACK for the 487 stops timer G
    assert _sent(agent) == []


@pytest.mark.parametrize(("status", "retry_after"), [(603, None), (503, "30")])
def test_reject(status: int, retry_after: str | None) -> None:
    agent = _agent()
    call = _ring(agent)
    agent.reject(call.call_id, status, 0.1)
    (reply,) = _sent(agent)
    assert isinstance(reply, Response) and reply.status == status
    assert reply.headers.get("Retry-After") == retry_after
    assert agent.events() == [CallEnded(call.call_id, f"rejected {status}")]


def test_bye_from_caller() -> None:
    agent = _agent()
    tag = _established(agent)
    agent.receive(request("BYE", cseq=2, branch="z9hG4bK-bye", to_tag=tag), PEER, 1.0)
    assert _statuses(agent) == [200]
    assert agent.events() == [CallEnded("call-1", "remote hangup")]


def test_bye_from_us() -> None:
    agent = _agent()
    _established(agent)
    agent.hangup("call-1", 1.0)
    (bye,) = _sent(agent)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert bye.uri == "sip:caller@127.0.0.1:5070" and bye.to.tag == "ftag"
    assert agent.events() == [CallEnded("call-1", "local hangup")]


def test_missing_ack_hangs_up_after_timer_h() -> None:
    agent = _agent()
    call = _ring(agent)
    agent.answer(call.call_id, 0.0)
    _sent(agent)
    while (deadline := agent.deadline) is not None and deadline < 40:
        agent.on_timer(deadline)
    sent = _sent(agent)
    assert sum(isinstance(m, Response) and m.status == 200 for m in sent) >= 5
    assert any(isinstance(m, Request) and m.method == "BYE" for m in sent)
    assert agent.events() == [CallEnded(call.call_id, "no ACK")]


@pytest.mark.parametrize(
    ("direction", "ours"),
    [("a=sendonly", "recvonly"), ("a=inactive", "inactive"), ("a=sendrecv", "sendrecv")],
)
def test_reinvite_hold_and_resume(direction: str, ours: str) -> None:
    agent = _agent()
    tag = _established(agent)
    offer = OFFER_SDP.replace("a=sendrecv", direction)
    agent.receive(request(body=offer, cseq=2, branch="z9hG4bK-re", to_tag=tag), PEER, 1.0)
    replies = [m for m in _sent(agent) if isinstance(m, Response)]
    assert [r.status for r in replies] == [100, 200]
    assert b"o=bridge" in replies[1].body
    (event,) = agent.events()
    assert isinstance(event, MediaUpdated) and event.media.direction == ours


@pytest.mark.parametrize(
    ("content_type", "body", "digit", "duration"),
    [
        ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n", "5", 160),
        ("application/dtmf-relay", "signal= #\r\n", "#", None),
        ("application/dtmf", "11", "#", None),
        ("application/dtmf", "*", "*", None),
    ],
)
def test_info_dtmf(content_type: str, body: str, digit: str, duration: int | None) -> None:
    agent = _agent()
    tag = _established(agent)
    info = request(
        "INFO", cseq=2, branch="z9hG4bK-i", to_tag=tag, body=body, content_type=content_type
    )
    agent.receive(info, PEER, 1.0)
    assert _statuses(agent) == [200]
    assert agent.events() == [DtmfInfo("call-1", digit, duration)]


def test_digest_challenge_then_accept() -> None:
    verifier = DigestVerifier("bridge", {"alice": "pw"})
    agent = _agent(verifier=verifier)
    agent.receive(request(body=OFFER_SDP), PEER, 0.0)
    challenge = next(m for m in _sent(agent) if isinstance(m, Response) and m.status == 401)
    header = authorize(
        challenge.headers.get_all("WWW-Authenticate")[0],
        method="INVITE",
        uri="sip:bot@127.0.0.1:5062",
        username="alice",
        password="pw",
    )
    authorised = request(
        body=OFFER_SDP, cseq=2, branch="z9hG4bK-2", extra=f"Authorization: {header}\r\n"
    )
    agent.receive(authorised, PEER, 1.0)
    assert isinstance(agent.events()[0], IncomingCall)


@pytest.mark.parametrize(("status", "replies"), [(None, []), (503, [503])])
def test_rate_limit(status: int | None, replies: list[int]) -> None:
    agent = _agent(rate_limiter=RateLimiter(rate=0.1, burst=1), rate_limit_status=status)
    agent.receive(request("OPTIONS"), PEER, 0.0)
    assert _statuses(agent) == [200]
    agent.receive(request("OPTIONS", branch="z9hG4bK-2"), PEER, 0.1)
    assert _statuses(agent) == replies


def test_allow_list_drops_silently() -> None:
    agent = _agent(allow_list=AllowList(["10.0.0.0/8"]))
    agent.receive(request("OPTIONS"), PEER, 0.0)
    assert agent.data_to_send() == []


def test_allow_list_can_refuse_with_a_status() -> None:
    agent = _agent(allow_list=AllowList(["10.0.0.0/8"]), allow_list_status=403)
    agent.receive(request(body=OFFER_SDP), PEER, 0.0)
    assert _statuses(agent) == [403] and agent.events() == []
    agent.receive(request("ACK"), PEER, 0.1)  # never answered, whatever comes
    assert agent.data_to_send() == []


def _notify(tag: str, cseq: int, sipfrag: str, state: str) -> bytes:
    return request(
        "NOTIFY",
        cseq=cseq,
        branch=f"z9hG4bK-n{cseq}",
        to_tag=tag,
        body=sipfrag,
        content_type="message/sipfrag;version=2.0",
        extra=f"Event: refer\r\nSubscription-State: {state}\r\n",
    )


def test_refer_then_notify_progress() -> None:
    agent = _agent()
    tag = _established(agent)
    assert agent.refer("call-1", "sip:agent@127.0.0.1:5090", 1.0)
    (refer,) = _sent(agent)
    assert isinstance(refer, Request) and refer.method == "REFER"
    assert refer.headers.get("Refer-To") == "<sip:agent@127.0.0.1:5090>"
    assert refer.to.tag == "ftag" and refer.from_.tag == tag
    ok = response_to(refer, 202, "Accepted", "ftag")
    agent.receive(ok.serialise(), PEER, 1.1)
    agent.receive(_notify(tag, 2, "SIP/2.0 180 Ringing\r\n", "active;expires=60"), PEER, 1.2)
    agent.receive(_notify(tag, 3, "SIP/2.0 200 OK\r\n", "terminated;reason=noresource"), PEER, 2)
    assert _statuses(agent) == [200, 200]
    assert agent.events() == [
        TransferProgress("call-1", 202, "Accepted", False),
        TransferProgress("call-1", 180, "Ringing", False),
        TransferProgress("call-1", 200, "OK", True),
    ]


def test_refer_refused_or_unanswered_is_final() -> None:
    agent = _agent()
    _established(agent)
    agent.refer("call-1", "sip:agent@127.0.0.1:5090", 1.0)
    (refer,) = _sent(agent)
    agent.receive(response_to(refer, 603, "Decline", "ftag").serialise(), PEER, 1.1)
    assert agent.events() == [TransferProgress("call-1", 603, "Decline", True)]
    agent.refer("call-1", "sip:agent@127.0.0.1:5090", 2.0)
    agent.on_timer(2.0 + 64 * 0.5 + 1)
    assert agent.events() == [TransferProgress("call-1", 408, "Request Timeout", True)]
    assert not agent.refer("no-such-call", "sip:agent@127.0.0.1", 3.0)


def test_notify_for_another_event_or_without_sipfrag() -> None:
    agent = _agent()
    tag = _established(agent)
    other = _notify(tag, 2, "SIP/2.0 200 OK", "active").replace(b"Event: refer", b"Event: dialog")
    agent.receive(other, PEER, 1.0)
    agent.receive(_notify(tag, 3, "hello", "active"), PEER, 1.1)
    assert _statuses(agent) == [489, 400] and agent.events() == []


def _outbound(agent: UserAgent, credentials: tuple[str, str] | None = None) -> Request:
    call_id = agent.call("sip:far@127.0.0.1:5080", 0.0, credentials=credentials)
    (invite,) = _sent(agent)
    assert isinstance(invite, Request) and invite.call_id == call_id
    assert invite.content_type == "application/sdp"
    return invite


def _answer_sdp() -> str:
    return OFFER_SDP.replace("RTP/AVP 8 0 101", "RTP/AVP 0 101")


@pytest.mark.parametrize("status", [486, 480, 487, 603])
def test_uac_failure_is_reported_and_acked(status: int) -> None:
    agent = _agent()
    invite = _outbound(agent)
    agent.receive(response_to(invite, 180, to_tag="t").serialise(), PEER, 0.1)
    agent.receive(response_to(invite, status, to_tag="t").serialise(), PEER, 0.2)
    (ack,) = _sent(agent)
    assert isinstance(ack, Request) and ack.method == "ACK"
    progress, failed = agent.events()
    assert isinstance(progress, CallProgress) and progress.status == 180
    assert isinstance(failed, CallFailed) and failed.status == status
    assert agent.config.rtp_ports.in_use == 0


def test_uac_answered_then_bye() -> None:
    agent = _agent()
    invite = _outbound(agent)
    ok = response_to(invite, 200, to_tag="t")
    ok.headers.add("Contact", "<sip:far@127.0.0.1:5080>")
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = _answer_sdp().encode()
    agent.receive(ok.serialise(), PEER, 0.1)
    agent.receive(ok.serialise(), PEER, 0.6)  # a retransmitted 200 is ACKed again
    acks = _sent(agent)
    assert [m.method for m in acks if isinstance(m, Request)] == ["ACK", "ACK"]
    (answered,) = agent.events()
    assert isinstance(answered, CallAnswered) and answered.media.codec == "PCMU"
    agent.hangup(invite.call_id, 1.0)
    (bye,) = _sent(agent)
    assert isinstance(bye, Request) and bye.method == "BYE" and bye.to.tag == "t"


def test_uac_cancel_waits_for_provisional() -> None:
    agent = _agent()
    invite = _outbound(agent)
    agent.cancel(invite.call_id, 0.1)
    assert _sent(agent) == []
    agent.receive(response_to(invite, 100).serialise(), PEER, 0.2)
    (cancel,) = _sent(agent)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch


def test_uac_timeout_is_408() -> None:
    agent = _agent()
    invite = _outbound(agent)
    while (deadline := agent.deadline) is not None:
        agent.on_timer(deadline)
    assert agent.events() == [CallFailed(invite.call_id, 408, "Request Timeout")]


def test_uac_answers_digest_challenge() -> None:
    verifier = DigestVerifier("far", {"me": "pw"})
    agent = _agent()
    invite = _outbound(agent, credentials=("me", "pw"))
    challenge = response_to(invite, 401, to_tag="t")
    challenge.headers.add("WWW-Authenticate", verifier.challenges(0.0)[0])
    agent.receive(challenge.serialise(), PEER, 0.1)
    _ack, retry = _sent(agent)
    assert isinstance(retry, Request) and retry.cseq == (2, "INVITE")
    assert verifier.check("INVITE", retry.headers.get("Authorization"), 0.2).value == "ok"
    assert agent.events() == []
