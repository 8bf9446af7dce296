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
from bridge.sip.sdp import NegotiatedMedia
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


# -- late offers: an INVITE without SDP gets our offer in the 200, the answer comes in the ACK

PCMA_ANSWER = OFFER_SDP.replace("RTP/AVP 8 0 101", "RTP/AVP 8 101")
ANSWERED = NegotiatedMedia("PCMA", 8, 8000, 101, 20, "127.0.0.1", 40000, "sendrecv")


def _ack(tag: str, body: str = "", cseq: int = 1, content_type: str = "application/sdp") -> bytes:
    branch = f"z9hG4bK-ack{cseq}"
    return request(
        "ACK", branch=branch, to_tag=tag, cseq=cseq, body=body, content_type=content_type
    )


def _late_offer_answered(
    agent: UserAgent, call_id: str = "call-1"
) -> tuple[IncomingCall, Response]:
    """A late-offer INVITE rung and answered: the event and our 200 (not yet ACKed)."""
    agent.receive(request(call_id=call_id, branch=f"z9hG4bK-{call_id}"), PEER, 0.0)
    assert _statuses(agent) == [100, 180]
    (event,) = agent.events()
    assert isinstance(event, IncomingCall)
    agent.answer(event.call_id, 0.1)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.status == 200
    return event, ok


def test_late_offer_gets_our_offer_and_takes_the_answer_from_the_ack() -> None:
    agent = _agent()
    event, ok = _late_offer_answered(agent)
    # Until the answer: listening on our port with our first codec, sending nowhere.
    assert event.remote_sdp is None and event.remote_rtp_addr == ("0.0.0.0", 0)
    assert (event.media.codec, event.media.direction, event.media.may_send) == (
        "PCMU",
        "recvonly",
        False,
    )
    assert ok.content_type == "application/sdp" and ok.contact is not None
    assert b"m=audio 30000 RTP/AVP 0 8 101\r\n" in ok.body  # every codec + telephone-event
    assert b"a=rtpmap:101 telephone-event/8000\r\n" in ok.body and b"a=sendrecv" in ok.body
    # Timer G repeats the 200 (the same offer) until the ACK.
    deadline = agent.deadline
    assert deadline is not None and deadline < 1
    agent.on_timer(deadline)
    assert [(m.status, m.body) for m in _sent(agent) if isinstance(m, Response)] == [(200, ok.body)]
    agent.receive(_ack(ok.to.tag or "", PCMA_ANSWER), PEER, 0.7)
    assert agent.events() == [MediaUpdated("call-1", ANSWERED)]
    agent.on_timer(5.0)
    assert agent.data_to_send() == [] and agent.deadline is None
    agent.receive(_ack(ok.to.tag or "", PCMA_ANSWER), PEER, 0.8)  # a retransmitted ACK
    assert agent.events() == [] and agent.data_to_send() == []


@pytest.mark.parametrize(
    "invite",
    [
        request(extra="Content-Type: application/sdp\r\n"),  # a type, Content-Length 0
        request(body="\r\n"),  # a blank body
    ],
)
def test_empty_bodies_are_late_offers(invite: bytes) -> None:
    agent = _agent()
    agent.receive(invite, PEER, 0.0)
    assert _statuses(agent) == [100, 180]
    (event,) = agent.events()
    assert isinstance(event, IncomingCall) and event.remote_sdp is None
    assert event.local_sdp.media[0].formats == ["0", "8", "101"]


def test_late_offer_with_no_codec_to_offer_gets_488() -> None:
    agent = _agent(codecs=())
    agent.receive(request(), PEER, 0.0)
    assert _statuses(agent) == [100, 488] and agent.events() == []
    assert agent.config.rtp_ports.in_use == 0


@pytest.mark.parametrize(
    ("body", "content_type", "logged"),
    [
        ("", "application/sdp", "no SDP answer"),
        ("v=0\r\nnonsense\r\n", "application/sdp", "bad SDP"),
        (OFFER_SDP.replace("RTP/AVP 8 0 101", "RTP/AVP 9"), "application/sdp", "no usable"),
        ("hello", "text/plain", "not application/sdp"),
    ],
)
def test_unusable_answer_in_the_ack_ends_only_that_call(
    body: str, content_type: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = _agent()
    other = _ring(agent, call_id="call-2", branch="z9hG4bK-2")
    agent.answer(other.call_id, 0.0)
    _sent(agent)
    _, ok = _late_offer_answered(agent)
    agent.receive(_ack(ok.to.tag or "", body, content_type=content_type), PEER, 0.2)
    (bye,) = _sent(agent)
    assert isinstance(bye, Request) and (bye.method, bye.call_id) == ("BYE", "call-1")
    assert agent.events() == [CallEnded("call-1", "unusable answer")]
    assert "call-1: unusable answer in the ACK" in caplog.text and logged in caplog.text
    assert agent.calls["call-2"].state == "answered" and agent.config.rtp_ports.in_use == 1


@pytest.mark.parametrize("answer", [PCMA_ANSWER, ""])
def test_late_offer_reinvite(answer: str) -> None:
    agent = _agent()
    tag = _established(agent)
    agent.receive(request(cseq=2, branch="z9hG4bK-re", to_tag=tag), PEER, 1.0)
    replies = [m for m in _sent(agent) if isinstance(m, Response)]
    assert [r.status for r in replies] == [100, 200]
    offer = replies[1].body
    assert b"m=audio 30000 RTP/AVP 0 8 101\r\n" in offer and b"o=bridge" in offer
    assert b" 2 IN IP4 " in offer  # o= version 2: the initial answer was 1
    # Our offer is outstanding: a new offer from the caller now is glare.
    agent.receive(request(body=OFFER_SDP, cseq=3, branch="z9hG4bK-3", to_tag=tag), PEER, 1.1)
    assert _statuses(agent) == [100, 491]
    agent.receive(_ack(tag, PCMA_ANSWER, cseq=1), PEER, 1.2)  # the first ACK, again
    assert agent.events() == [] and _sent(agent) == []
    agent.receive(_ack(tag, answer, cseq=2), PEER, 1.3)
    if answer:
        assert agent.events() == [MediaUpdated("call-1", ANSWERED)] and _sent(agent) == []
    else:
        assert agent.events() == [CallEnded("call-1", "unusable answer")]
        assert [m.method for m in _sent(agent) if isinstance(m, Request)] == ["BYE"]


# -- option tags (RFC 3261 §8.2.2.3): what a request Requires must be supported, or 420


@pytest.mark.parametrize(
    ("require", "unsupported"),
    [
        ("100rel", ["100rel"]),
        ("timer, 100rel", ["100rel"]),
        ("precondition,x-foo", ["precondition", "x-foo"]),
    ],
)
def test_require_of_unsupported_extension_gets_420(require: str, unsupported: list[str]) -> None:
    agent = _agent()
    agent.receive(request(body=OFFER_SDP, extra=f"Require: {require}\r\n"), PEER, 0.0)
    sent = [m for m in _sent(agent) if isinstance(m, Response) and m.status != 100]
    assert [r.status for r in sent] == [420]
    assert sent[0].headers.get_all("Unsupported") == unsupported
    assert agent.events() == [] and agent.config.rtp_ports.in_use == 0
    agent.receive(request("ACK"), PEER, 0.1)  # the ACK of the 420 is absorbed
    assert _sent(agent) == []


def test_require_is_checked_in_dialog_but_never_on_ack_or_cancel() -> None:
    agent = _agent()
    call = _ring(agent)
    agent.receive(request("CANCEL", extra="Require: 100rel\r\n"), PEER, 0.5)
    assert _statuses(agent) == [200, 487] and agent.events() == [
        CallEnded(call.call_id, "cancelled")
    ]
    agent = _agent()
    tag = _established(agent)
    info = request("INFO", cseq=2, branch="z9hG4bK-i", to_tag=tag, extra="Require: foo\r\n")
    agent.receive(info, PEER, 1.0)
    assert _statuses(agent) == [420] and agent.calls["call-1"].state == "answered"


def test_require_timer_is_accepted_and_options_advertise_what_we_do() -> None:
    agent = _agent()
    _ring(agent, extra="Require: timer\r\nSupported: timer, 100rel\r\n")
    agent.receive(request("OPTIONS", call_id="o", branch="z9hG4bK-o"), PEER, 0.0)
    (ok,) = [m for m in _sent(agent) if isinstance(m, Response) and m.status == 200]
    assert "UPDATE" in ok.headers.get_all("Allow") and ok.headers.get_all("Supported") == ["timer"]
    assert ok.headers.get_all("Accept") == ["application/sdp", "multipart/mixed"]


# -- UPDATE (RFC 3311)


def _update(tag: str, cseq: int, body: str = "", extra: str = "") -> bytes:
    return request(
        "UPDATE", cseq=cseq, branch=f"z9hG4bK-u{cseq}", to_tag=tag, body=body, extra=extra
    )


def test_update_without_body_is_a_refresh() -> None:
    agent = _agent()
    tag = _established(agent)
    agent.receive(_update(tag, 2), PEER, 1.0)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.status == 200 and ok.body == b""
    assert agent.events() == []


@pytest.mark.parametrize(
    ("direction", "ours", "codec"),
    [("a=sendonly", "recvonly", "PCMU"), ("a=sendrecv", "sendrecv", "PCMA")],
)
def test_update_with_sdp_is_an_offer(direction: str, ours: str, codec: str) -> None:
    agent = _agent()
    tag = _established(agent)
    offer = OFFER_SDP.replace("a=sendrecv", direction)
    if codec == "PCMA":
        offer = offer.replace("RTP/AVP 8 0 101", "RTP/AVP 8 101")
    agent.receive(_update(tag, 2, offer), PEER, 1.0)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.status == 200 and ok.content_type == "application/sdp"
    assert f"a={ours}".encode() in ok.body and b" 2 IN IP4 " in ok.body  # o= version 2
    (event,) = agent.events()
    assert isinstance(event, MediaUpdated) and (event.media.direction, event.media.codec) == (
        ours,
        codec,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (OFFER_SDP.replace("RTP/AVP 8 0 101", "RTP/AVP 9"), "application/sdp", 488),
        ("v=0\r\nnonsense\r\n", "application/sdp", 400),
        ("hello", "text/plain", 415),
    ],
)
def test_unusable_update_is_refused_and_the_call_goes_on(
    body: str, content_type: str, status: int
) -> None:
    agent = _agent()
    tag = _established(agent)
    update = request(
        "UPDATE", cseq=2, branch="z9hG4bK-u", to_tag=tag, body=body, content_type=content_type
    )
    agent.receive(update, PEER, 1.0)
    (reply,) = _sent(agent)
    assert isinstance(reply, Response) and reply.status == status
    if status == 415:
        assert reply.headers.get_all("Accept") == ["application/sdp", "multipart/mixed"]
    assert agent.events() == [] and agent.calls["call-1"].state == "answered"


def test_update_offer_while_ours_is_outstanding_gets_491() -> None:
    agent = _agent()
    tag = _established(agent)
    agent.receive(request(cseq=2, branch="z9hG4bK-re", to_tag=tag), PEER, 1.0)  # late offer
    _sent(agent)
    agent.receive(_update(tag, 3, OFFER_SDP), PEER, 1.1)
    assert _statuses(agent) == [491]
    agent.receive(_update(tag, 4), PEER, 1.2)  # a refresh carries no offer: no glare
    assert _statuses(agent) == [200]


def test_update_offer_while_the_invite_is_unanswered_gets_500_retry_after() -> None:
    agent = _agent()
    call = _ring(agent)
    tag = agent.calls[call.call_id].local_tag
    agent.receive(_update(tag, 2, OFFER_SDP), PEER, 0.5)
    (reply,) = _sent(agent)
    assert isinstance(reply, Response) and reply.status == 500
    assert 0 <= int(reply.headers.get("Retry-After") or "-1") <= 10
    assert agent.events() == []


def test_update_outside_a_dialog_gets_481() -> None:
    agent = _agent()
    agent.receive(request("UPDATE", body=OFFER_SDP), PEER, 0.0)
    assert _statuses(agent) == [481]
    agent.receive(_update("nope", 2), PEER, 0.1)
    assert _statuses(agent) == [481] and agent.events() == []


# -- session timers (RFC 4028)

SE = "Session-Expires: {}\r\nSupported: timer\r\n"


def _timed_call(agent: UserAgent, header: str = SE.format(90)) -> tuple[str, Response]:
    """An inbound call asking for a session timer, answered at 0.1 and ACKed: tag and 200."""
    call = _ring(agent, extra=header)
    agent.answer(call.call_id, 0.1)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.status == 200
    agent.receive(request("ACK", branch="z9hG4bK-ack", to_tag=ok.to.tag or ""), PEER, 0.2)
    return ok.to.tag or "", ok


def _expiry(agent: UserAgent) -> float | None:
    """When the only call's session timer fires next (None: it has none)."""
    (call,) = agent.calls.values()
    return call.timer.deadline if call.timer else None


def _run_until(agent: UserAgent, end: float) -> list[Request]:
    """Fire the timers due until ``end``: the requests sent, retransmissions left out."""
    sent: dict[tuple[str, int], Request] = {}
    while (deadline := agent.deadline) is not None and deadline <= end:
        agent.on_timer(deadline)
        for m in _sent(agent):
            if isinstance(m, Request):
                sent.setdefault((m.method, m.cseq[0]), m)
    return list(sent.values())


@pytest.mark.parametrize(
    ("header", "granted", "require"),
    [
        (SE.format(90), "90;refresher=uac", ["timer"]),
        (SE.format("1800;refresher=uac"), "1800;refresher=uac", ["timer"]),
        ("Session-Expires: 120\r\n", "120;refresher=uas", []),  # no timer support: we refresh
    ],
)
def test_session_timer_is_granted_in_the_200(header: str, granted: str, require: list[str]) -> None:
    agent = _agent()
    _, ok = _timed_call(agent, header)
    assert ok.headers.get("Session-Expires") == granted
    assert ok.headers.get_all("Require") == require and "timer" in ok.headers.get_all("Supported")


@pytest.mark.parametrize(
    ("header", "granted"),
    [
        ("Supported: timer\r\n", "1800;refresher=uac"),
        ("Supported: timer\r\nMin-SE: 2000\r\n", "2000;refresher=uac"),
        ("", None),
    ],
)
def test_we_ask_a_timer_of_callers_able_but_not_asking(header: str, granted: str | None) -> None:
    agent = _agent()
    _, ok = _timed_call(agent, header)
    assert ok.headers.get("Session-Expires") == granted


def test_unrefreshed_session_expires_with_a_bye() -> None:
    agent = _agent()
    _timed_call(agent)
    # 90 s from the 200 (at 0.1), less min(32, 90/3) = 30: at 60.1 s.
    assert _expiry(agent) == pytest.approx(60.1)
    assert _run_until(agent, 60.0) == []
    (bye,) = _run_until(agent, 61.0)
    assert bye.method == "BYE"
    assert agent.events() == [CallEnded("call-1", "session expired")]


@pytest.mark.parametrize("method", ["UPDATE", "INVITE"])
def test_refresh_by_update_or_reinvite_keeps_the_call(method: str) -> None:
    agent = _agent()
    tag, _ = _timed_call(agent)
    for n, at in enumerate((40.0, 80.0, 120.0), start=2):
        _run_until(agent, at)
        body = OFFER_SDP if method == "INVITE" else ""
        refresh = request(
            method, cseq=n, branch=f"z9hG4bK-r{n}", to_tag=tag, body=body,
            extra=SE.format("90;refresher=uac"),
        )  # fmt: skip
        agent.receive(refresh, PEER, at)
        ok = next(m for m in _sent(agent) if isinstance(m, Response) and m.status == 200)
        assert ok.headers.get("Session-Expires") == "90;refresher=uac"
        if method == "INVITE":
            agent.receive(request("ACK", cseq=n, branch=f"z9hG4bK-a{n}", to_tag=tag), PEER, at)
    assert agent.calls["call-1"].state == "answered"
    assert [e for e in agent.events() if isinstance(e, CallEnded)] == []
    assert _run_until(agent, 179.0) == []
    (bye,) = _run_until(agent, 181.0)
    assert bye.method == "BYE"


def test_refresh_without_session_expires_keeps_the_interval_for_a_timer_aware_peer() -> None:
    agent = _agent()
    tag, _ = _timed_call(agent)
    agent.receive(_update(tag, 2, extra="Supported: timer\r\n"), PEER, 50.0)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.headers.get("Session-Expires") == "90;refresher=uac"
    assert _expiry(agent) == pytest.approx(110.0)
    agent.receive(_update(tag, 3), PEER, 60.0)  # one unaware of timers: it is turned off
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.headers.get("Session-Expires") is None
    assert _expiry(agent) is None


@pytest.mark.parametrize("in_dialog", [False, True])
def test_session_expires_below_min_se_gets_422(in_dialog: bool) -> None:
    agent = _agent(min_se=120)
    if in_dialog:
        tag, _ = _timed_call(agent, SE.format(120))
        agent.receive(_update(tag, 2, extra=SE.format(90)), PEER, 1.0)
    else:
        agent.receive(request(body=OFFER_SDP, extra=SE.format(90)), PEER, 0.0)
    (reply,) = [m for m in _sent(agent) if isinstance(m, Response) and m.status != 100]
    assert reply.status == 422 and reply.headers.get("Min-SE") == "120"
    assert agent.config.rtp_ports.in_use == (1 if in_dialog else 0)


@pytest.mark.parametrize("value", ["abc", "90;refresher=me", "0"])
def test_malformed_session_expires_gets_400(value: str) -> None:
    agent = _agent()
    agent.receive(request(body=OFFER_SDP, extra=f"Session-Expires: {value}\r\n"), PEER, 0.0)
    (reply,) = [m for m in _sent(agent) if isinstance(m, Response) and m.status != 100]
    assert reply.status == 400 and "Session-Expires" in reply.reason


ALLOW_UPDATE = "Allow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n"


def test_we_refresh_by_update_when_the_caller_asks_us_to() -> None:
    agent = _agent()
    _timed_call(agent, SE.format("90;refresher=uas") + ALLOW_UPDATE)
    (update,) = _run_until(agent, 46.0)
    assert update.method == "UPDATE" and update.body == b""
    assert update.headers.get("Session-Expires") == "90;refresher=uac"  # we send: we are uac
    ok = response_to(update, 200)
    ok.headers.add("Session-Expires", "90;refresher=uac")
    agent.receive(ok.serialise(), PEER, 46.0)
    assert _expiry(agent) == pytest.approx(91.0)


def test_we_refresh_by_reinvite_a_caller_not_allowing_update() -> None:
    agent = _agent()
    _timed_call(agent, SE.format("90;refresher=uas"))
    (reinvite,) = _run_until(agent, 46.0)
    assert reinvite.method == "INVITE" and reinvite.to.tag == "ftag"
    assert b"m=audio 30000 RTP/AVP 0 8 101" in reinvite.body  # our media, offered again
    # The caller's re-INVITE now would be glare.
    glare = request(body=OFFER_SDP, cseq=2, branch="z9hG4bK-g", to_tag=reinvite.from_.tag or "")
    agent.receive(glare, PEER, 45.5)
    assert _statuses(agent) == [100, 491]
    ok = response_to(reinvite, 200)
    ok.headers.add("Session-Expires", "90;refresher=uac")
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = PCMA_ANSWER.encode()
    agent.receive(ok.serialise(), PEER, 46.0)
    agent.receive(ok.serialise(), PEER, 46.5)  # a retransmitted 200 is ACKed again
    acks = [m for m in _sent(agent) if isinstance(m, Request)]
    assert [(m.method, m.cseq[0]) for m in acks] == [("ACK", reinvite.cseq[0])] * 2
    assert agent.events() == [MediaUpdated("call-1", ANSWERED)]  # the answer chose PCMA
    assert _expiry(agent) == pytest.approx(91.0)


def _timed_outbound(agent: UserAgent, granted: str | None) -> Request:
    invite = _outbound(agent)
    assert invite.headers.get("Session-Expires") == "1800"
    assert "timer" in invite.headers.get_all("Supported")
    ok = response_to(invite, 200, to_tag="t")
    ok.headers.add("Contact", "<sip:far@127.0.0.1:5080>")
    ok.headers.add("Allow", ALLOW_UPDATE.partition(": ")[2].strip())
    if granted:
        ok.headers.add("Session-Expires", granted)
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = _answer_sdp().encode()
    agent.receive(ok.serialise(), PEER, 1.0)
    _sent(agent)  # the ACK
    assert isinstance(agent.events()[0], CallAnswered)
    return invite


def test_uac_refreshes_with_update_at_half_the_interval() -> None:
    agent = _agent()
    _timed_outbound(agent, "100;refresher=uac")
    assert _expiry(agent) == pytest.approx(51.0)
    (update,) = _run_until(agent, 51.0)
    assert isinstance(update, Request) and update.method == "UPDATE" and update.to.tag == "t"
    assert update.headers.get("Session-Expires") == "100;refresher=uac"
    ok = response_to(update, 200)
    ok.headers.add("Session-Expires", "100;refresher=uac")
    agent.receive(ok.serialise(), PEER, 51.5)
    assert _expiry(agent) == pytest.approx(101.5)  # half the interval after the refresh


@pytest.mark.parametrize(
    ("status", "ended"), [(408, True), (481, True), (405, False), (None, True)]
)
def test_uac_refresh_failures(status: int | None, ended: bool) -> None:
    agent = _agent()
    _timed_outbound(agent, "100;refresher=uac")
    (update,) = _run_until(agent, 51.0)
    assert isinstance(update, Request)
    if status is None:  # no answer at all: the transaction times out
        sent = _run_until(agent, 51.0 + 64 * 0.5 + 1)
    else:
        agent.receive(response_to(update, status).serialise(), PEER, 52.0)
        sent = _sent(agent)
    methods = [m.method for m in sent if isinstance(m, Request)]
    events = agent.events()
    assert events == ([CallEnded(update.call_id, "session expired")] if ended else [])
    assert ("BYE" in methods) == ended
    if not ended:  # a peer refusing the UPDATE it said it allowed gets a re-INVITE at once
        assert methods == ["INVITE"]


def test_uac_not_the_refresher_expires_and_without_a_grant_has_no_timer() -> None:
    agent = _agent()
    invite = _timed_outbound(agent, "90;refresher=uas")
    assert _expiry(agent) == pytest.approx(61.0)
    (bye,) = _run_until(agent, 61.0)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert agent.events() == [CallEnded(invite.call_id, "session expired")]
    agent = _agent()
    _timed_outbound(agent, None)
    assert _expiry(agent) is None


def test_uac_retries_after_422_with_the_min_se_asked() -> None:
    agent = _agent()
    invite = _outbound(agent)
    too_small = response_to(invite, 422, to_tag="t")
    too_small.headers.add("Min-SE", "3600")
    agent.receive(too_small.serialise(), PEER, 0.1)
    ack, retry = _sent(agent)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert isinstance(retry, Request) and retry.cseq == (2, "INVITE")
    assert (retry.headers.get("Session-Expires"), retry.headers.get("Min-SE")) == ("3600", "3600")
    again = response_to(retry, 422, to_tag="t")
    again.headers.add("Min-SE", "3600")
    agent.receive(again.serialise(), PEER, 0.2)
    assert agent.events() == [CallFailed(invite.call_id, 422, "")]


# -- multipart bodies: the SDP beside ISUP (SIP-I) or QSIG

ISUP = b"\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\x00"


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    body = b"preamble\r\n"
    for headers, data in parts:
        body += b"--unique-boundary-1\r\n" + headers.encode() + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--unique-boundary-1--\r\n"


def _multipart_invite(body: bytes) -> bytes:
    head = request(
        extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed;boundary="unique-boundary-1"\r\n'
    ).partition(b"Content-Length")[0]
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


SDP_PART = ("Content-Type: application/sdp", OFFER_SDP.encode())
REQUIRED = "Content-Disposition: signal;handling=required"


@pytest.mark.parametrize(
    "isup_headers",
    [
        "Content-Type: application/isup;version=itu-t92+\r\n"
        "Content-Disposition: signal;handling=optional",
        "Content-Type: application/isup;version=itu-t92+",  # no disposition: still optional to us
    ],
)
def test_multipart_invite_is_answered_from_its_sdp_part(isup_headers: str) -> None:
    agent = _agent()
    agent.receive(_multipart_invite(_multipart(SDP_PART, (isup_headers, ISUP))), PEER, 0.0)
    assert _statuses(agent) == [100, 180]
    (event,) = agent.events()
    assert isinstance(event, IncomingCall) and event.remote_rtp_addr == ("127.0.0.1", 40000)
    agent.answer(event.call_id, 0.1)
    (ok,) = _sent(agent)
    assert isinstance(ok, Response) and ok.content_type == "application/sdp"


def test_multipart_without_sdp_is_a_late_offer() -> None:
    agent = _agent()
    isup = ("Content-Type: application/isup\r\nContent-Disposition: signal;handling=optional", ISUP)
    agent.receive(_multipart_invite(_multipart(isup)), PEER, 0.0)
    (event,) = agent.events()
    assert isinstance(event, IncomingCall) and event.remote_sdp is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            _multipart(
                SDP_PART,
                ("Content-Type: application/qsig\r\n" + REQUIRED, ISUP),
            ),
            415,
        ),
        (b"--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n", 400),  # no end
    ],
)
def test_multipart_we_cannot_use_is_refused(body: bytes, status: int) -> None:
    agent = _agent()
    agent.receive(_multipart_invite(body), PEER, 0.0)
    (reply,) = [m for m in _sent(agent) if isinstance(m, Response) and m.status != 100]
    assert reply.status == status and agent.events() == []
    if status == 415:
        assert reply.headers.get_all("Accept") == ["application/sdp", "multipart/mixed"]
