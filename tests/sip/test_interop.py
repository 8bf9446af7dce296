"""What carriers and PBXs send, from a real peer (sipp): option tags the bridge lacks (420),
session timers both ways (RFC 4028, refreshed by UPDATE or left to expire), UPDATE offers
(RFC 3311) and SIP-I's multipart SDP + ISUP bodies."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from aiohttp import ClientSession

from tests.campaign.farend import tone
from tests.sip.calls import (
    caller_channel,
    expect_header,
    g711_file,
    in_dialog,
    loudest_second,
    pause,
    referenced,
    reply,
    rtp_stream,
    summary,
    wait_for_records,
)
from tests.sip.conftest import StartBridge
from tests.sip.sipp import finish, free_port, run_sipp, start_sipp

# The first test of a run also warms the speech engines up (slow on a loaded machine).
pytestmark = [pytest.mark.peer, pytest.mark.timeout(180)]

SHORT_TIMERS = {"min_se_s": 2, "session_expires_s": 4}
TIMER = ("Session-Expires: 2;refresher=uac", "Supported: timer")


def _sdp(direction: str = "sendrecv", version: int = 1) -> str:
    lines = [
        "v=0",
        f"o=user1 53655765 {version} IN IP[local_ip_type] [local_ip]",
        "s=-",
        "c=IN IP[media_ip_type] [media_ip]",
        "t=0 0",
        "m=audio [rtpstream_audio_port] RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        f"a={direction}",
    ]
    return "\n      ".join(lines)


MULTIPART_SDP_ISUP = "\n      ".join(
    [
        "--unique-boundary-1",
        "Content-Type: application/sdp",
        "",
        _sdp(),
        "--unique-boundary-1",
        "Content-Type: application/isup;version=itu-t92+;base=itu-t92+",
        "Content-Disposition: signal;handling=optional",
        "",
        "01004900000302000704100033632143000a0607",
        "--unique-boundary-1--",
    ]
)


def _duration(meta: dict[str, object]) -> float:
    """How long a call record lasted, in seconds."""
    start, end = (datetime.fromisoformat(str(meta[k])) for k in ("start_utc", "end_utc"))
    return (end - start).total_seconds()


def _scenario(path: Path, *steps: str, variables: tuple[str, ...] = ()) -> Path:
    """A sipp scenario of ``steps``; ``variables`` are those the steps' checks assign."""
    references = [referenced(",".join(variables))] if variables else []
    body = "\n".join([*steps, *references])
    path.write_text(
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        f'<scenario name="{path.stem}">\n{body}\n</scenario>\n'
    )
    return path


def _request(step: str, status: int, *checks: str) -> str:
    """An :func:`in_dialog` step expecting ``status`` (after an optional 100) with ``checks``
    (:func:`expect_header` actions: sipp takes one action element per message, so merged)."""
    merged = "".join(c.removeprefix("<action>").removesuffix("</action>") for c in checks)
    return step.replace(
        '<recv response="200"/>',
        f'<recv response="100" optional="true"/>\n  <recv response="180" optional="true"/>\n'
        f'  <recv response="{status}"><action>{merged}</action></recv>',
    )


def _invite(
    status: int, body: str, content_type: str, *headers: str, checks: tuple[str, ...] = ()
) -> str:
    """The caller's INVITE (CSeq 1) expecting ``status``."""
    step = in_dialog("INVITE", 1, body, f"Content-Type: {content_type}", *headers, to_tag="")
    return _request(step, status, *checks)


def _ack(branch: str = "[branch]") -> str:
    """The ACK of the INVITE's final response (a non-2xx's takes the INVITE's branch)."""
    return f"""  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>"""


@pytest.mark.parametrize(
    ("headers", "status", "header", "regexp"),
    [
        (("Require: 100rel", "Supported: 100rel"), 420, "Unsupported", "^ *100rel$"),
        (("Session-Expires: 1", "Supported: timer"), 422, "Min-SE", "^ *2$"),
    ],
)
async def test_what_we_cannot_do_is_refused_with_the_reason(
    sip_bridge: StartBridge,
    tmp_path: Path,
    headers: tuple[str, ...],
    status: int,
    header: str,
    regexp: str,
) -> None:
    running = await sip_bridge(**SHORT_TIMERS)
    check = expect_header(header, regexp, "checked")
    invite = _invite(status, _sdp(), "application/sdp", *headers, checks=(check,))
    steps = [invite, _ack("[branch-4]")]
    scenario = _scenario(tmp_path / "refused.xml", *steps, variables=("checked",))
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    assert running.bridge.calls == {} and not list(running.records.glob("*"))
    assert running.front.endpoint.agent.config.rtp_ports.in_use == 0


def _timed_invite() -> str:
    checks = (
        expect_header("Session-Expires", "^ *2;refresher=uac$", "granted"),
        expect_header("Require", "^ *timer$", "required"),
    )
    return _invite(200, _sdp(), "application/sdp", *TIMER, checks=checks)


async def test_a_caller_that_never_refreshes_gets_our_bye(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(**SHORT_TIMERS)
    steps = [_timed_invite(), _ack(), '  <recv request="BYE" timeout="6000"/>', reply("200 OK")]
    scenario = _scenario(tmp_path / "expires.xml", *steps, variables=("granted", "required"))
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output  # the BYE came
    (folder,) = await wait_for_records(running.records)
    meta = summary(folder)
    # Expiry: 2 s less a third, counted from our 200.
    assert meta["end_reason"] == "session-expired" and 1.0 < _duration(meta) < 3.0, meta


async def test_update_refreshes_and_offers_keep_the_call_up(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(**SHORT_TIMERS)
    audio = g711_file(tmp_path / "tone.raw", tone(440.0, 4.0, -12), "PCMU")
    steps = [_timed_invite(), _ack(), rtp_stream(audio, 0)]
    refreshed = expect_header("Session-Expires", "^ *2;refresher=uac$", "refreshed")
    for cseq in range(2, 7):  # five refreshes 0.8 s apart: 4 s, twice the interval
        steps += [pause(800), _request(in_dialog("UPDATE", cseq, "", *TIMER), 200, refreshed)]
    # An offer by UPDATE: hold (we answer recvonly), then resume.
    held = '<ereg regexp="a=recvonly" search_in="body" check_it="true" assign_to="held"/>'
    hold = in_dialog("UPDATE", 7, _sdp("sendonly", 2), "Content-Type: application/sdp")
    resume = in_dialog("UPDATE", 8, _sdp("sendrecv", 3), "Content-Type: application/sdp")
    steps += [_request(hold, 200, held), pause(300), resume, in_dialog("BYE", 9)]
    variables = ("granted", "required", "refreshed", "held")
    scenario = _scenario(tmp_path / "refresh.xml", *steps, variables=variables)
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    meta = summary(folder)
    assert meta["end_reason"] == "remote-hangup" and _duration(meta) > 4.0, meta


async def test_multipart_sdp_and_isup_invite_is_answered_with_media(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge()
    audio = g711_file(tmp_path / "tone.raw", tone(440.0, 2.0, -12), "PCMU")
    answered = '<ereg regexp="m=audio [0-9]+ RTP/AVP 0 101" search_in="body" check_it="true"'
    answered += ' assign_to="answer"/>'
    invite = _invite(
        200,
        MULTIPART_SDP_ISUP,
        'multipart/mixed;boundary="unique-boundary-1"',
        "MIME-Version: 1.0",
        checks=(answered,),
    )
    steps = [invite, _ack(), rtp_stream(audio, 0), pause(3500), in_dialog("BYE", 9)]
    scenario = _scenario(tmp_path / "sipi.xml", *steps, variables=("answer",))
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    assert summary(folder)["end_reason"] == "remote-hangup"
    caller, rate = caller_channel(folder)
    heard = loudest_second(caller, rate)
    assert np.sqrt(np.mean(heard**2)) > 2000  # the caller's tone reached the bridge


def _callee_granting_timer(path: Path) -> Path:
    """The far end of our call: grants a 2 s timer with us refreshing, answers two refreshing
    UPDATEs, then has lost the call (481), which must bring our BYE."""
    asked = expect_header("Session-Expires", "^ *4$", "asked")
    refreshing = expect_header("Session-Expires", "^ *2;refresher=uac$", "refreshing")
    granted = ("Session-Expires: 2;refresher=uac", "Require: timer")
    ok = f"""  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Allow: INVITE, ACK, BYE, CANCEL, UPDATE
      {granted[0]}
      {granted[1]}
      Content-Type: application/sdp
      Content-Length: [len]

      {_sdp()}

    ]]>
  </send>"""
    steps = [f'  <recv request="INVITE" crlf="true">{asked}</recv>', ok, '  <recv request="ACK"/>']
    for _ in range(2):
        steps += [f'  <recv request="UPDATE">{refreshing}</recv>', reply("200 OK", *granted)]
    steps += ['  <recv request="UPDATE"/>', reply("481 Call/Transaction Does Not Exist")]
    steps += ['  <recv request="BYE"/>', reply("200 OK")]
    return _scenario(path, *steps, variables=("asked", "refreshing"))


async def test_outbound_call_refreshes_when_the_callee_makes_us_the_refresher(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(outbound_targets=["sip:*@127.0.0.1"], **SHORT_TIMERS)
    port = free_port()
    scenario = _callee_granting_timer(tmp_path / "callee.xml")
    sipp = await start_sipp("-sf", str(scenario), "-p", str(port))
    await asyncio.sleep(0.5)  # let sipp bind
    async with (
        ClientSession() as session,
        session.post(
            f"{running.http}/api/calls", json={"to": f"sip:callee@127.0.0.1:{port}"}
        ) as response,
    ):
        assert response.status == 201, await response.text()
    result = await finish(sipp)
    assert result.returncode == 0, result.output  # two UPDATEs a second apart, then our BYE
    (folder,) = await wait_for_records(running.records)
    meta = summary(folder)
    assert meta["end_reason"] == "session-expired" and _duration(meta) > 2.0, meta


async def test_a_caller_making_us_the_refresher_without_update_gets_reinvites(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(**SHORT_TIMERS)
    checks = (expect_header("Session-Expires", "^ *2;refresher=uas$", "granted"),)
    asking = ("Session-Expires: 2;refresher=uas", "Supported: timer")  # and no Allow: UPDATE
    invite = _invite(200, _sdp(), "application/sdp", *asking, checks=checks)
    refreshing = expect_header("Session-Expires", "^ *2;refresher=uac$", "refreshing")
    answer = f"""  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: sip:sipp@[local_ip]:[local_port]
      Session-Expires: 2;refresher=uac
      Require: timer
      Content-Type: application/sdp
      Content-Length: [len]

      {_sdp(version=2)}

    ]]>
  </send>"""
    steps = [invite, _ack()]
    for _ in range(2):  # two refreshes, a second apart
        steps += [
            f'  <recv request="INVITE">{refreshing}</recv>',
            answer,
            '  <recv request="ACK"/>',
        ]
    steps += [in_dialog("BYE", 9)]
    scenario = _scenario(tmp_path / "reinvite.xml", *steps, variables=("granted", "refreshing"))
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    meta = summary(folder)
    assert meta["end_reason"] == "remote-hangup" and _duration(meta) > 1.5, meta
