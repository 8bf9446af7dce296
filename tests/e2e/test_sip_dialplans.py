"""The shipped customer-service dialplan end to end over SIP with the embedded engines: its keypad
menu over RFC 4733, a blind transfer that really reaches an agent, and the opening-hours answer
as the caller heard it.

Calls go to the plan's own SIP number ("100", from ``serves.sip``), so routing is exercised too.
Assertions are on the call record (what the bridge understood and said) and, where the peer can
record, on what the caller heard.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.peers.baresip import call_with_audio
from tests.sip import conftest as sip
from tests.sip.calls import (
    callee_scenario,
    caller_scenario,
    caller_text,
    dtmf_pcap,
    g711_file,
    in_dialog,
    pause,
    referenced,
    reply,
    rtp_stream,
    summary,
    transcript,
    wait_for_records,
)
from tests.sip.conftest import StartBridge
from tests.sip.sipp import finish, free_port, run_sipp, start_sipp

sip_bridge = sip.sip_bridge  # the SIP tests' fixture: a bridge with its SIP front door

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(120)]

NUMBER = "100"  # customer-service's serves.sip
HOURS = "We are open Monday to Friday, from nine in the morning until six in the evening."
HOLD = "Please hold while I put you through to one of our agents."


def _bot(folder: Path) -> list[dict[str, object]]:
    return [x for x in transcript(folder) if x["who"] == "bot"]


def _plans_with_agent(tmp_path: Path, agent: str) -> Path:
    """A copy of the shipped dialplans whose transfers go to ``agent`` (a sipp on loopback)."""
    plans = tmp_path / "dialplans"
    shutil.copytree(REPO / "dialplans", plans)
    for path in plans.glob("*.yaml"):
        path.write_text(path.read_text().replace("sip:agents@pbx.example.com", agent))
    return plans


async def test_keypad_menu_over_rfc4733(sip_bridge: StartBridge, tmp_path: Path) -> None:
    # The greeting plays out (about 10 s), then the caller presses 1: opening hours.
    steps = [pause(12000), dtmf_pcap("1"), pause(8000)]
    running = await sip_bridge()
    scenario = caller_scenario(tmp_path / "menu.xml", *steps)
    result = await run_sipp("-sf", str(scenario), "-s", NUMBER, f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output

    (folder,) = await wait_for_records(running.records)
    lines = transcript(folder)
    assert [x["dtmf"] for x in lines if "dtmf" in x] == ["1"]
    greeting, hours, *_ = _bot(folder)
    assert "thank you for calling acme" in str(greeting["text"]).lower()
    assert greeting["interrupted"] is False, greeting  # the key came after the prompt
    assert hours["text"] == HOURS and hours["heard"] == HOURS, hours
    assert summary(folder)["dialplan"] == "customer-service"


def _transfer_to_agent(bridge_port: int) -> list[str]:
    """The caller's side of a blind transfer, done for real: accept the bridge's REFER, call the
    Refer-To URI (the agent, another sipp), report each stage in a NOTIFY, and take the bridge's
    BYE once it learns the transfer succeeded."""
    sipfrag = "Content-Type: message/sipfrag;version=2.0"
    to_agent = """  <send retrans="500">
    <![CDATA[

      {method} [$refer_to] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag10[call_number]
      To: <[$refer_to]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Referred-By: <sip:bridge@127.0.0.1>
{body}
    ]]>
  </send>"""
    sdp = """      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
"""
    empty = "      Content-Length: 0\n"
    agent_uri = r"sip:agents@127\.0\.0\.1:([0-9]+)"
    return [
        '  <recv request="REFER"><action>'
        f'<ereg regexp="{agent_uri}" search_in="hdr" header="Refer-To:" check_it="true"'
        ' assign_to="refer_to,agent_port"/>'
        '<ereg regexp=";tag=([^;> ]+)" search_in="hdr" header="From:" check_it="true"'
        ' assign_to="from_tag,bridge_tag"/>'
        "</action></recv>",
        reply("202 Accepted"),
        in_dialog("NOTIFY", 2, "SIP/2.0 100 Trying", "Event: refer",
                  "Subscription-State: active;expires=60", sipfrag),
        '  <nop><action><setdest host="127.0.0.1" port="[$agent_port]" protocol="UDP"/>'
        "</action></nop>",
        to_agent.format(method="INVITE", cseq=1, to_tag="", body=sdp),
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
        '  <recv response="200"/>',
        to_agent.format(method="ACK", cseq=1, to_tag="[peer_tag_param]", body=empty)
        .replace(' retrans="500"', ""),
        pause(500),
        to_agent.format(method="BYE", cseq=2, to_tag="[peer_tag_param]", body=empty),
        '  <recv response="200"/>',
        f'  <nop><action><setdest host="127.0.0.1" port="{bridge_port}" protocol="UDP"/>'
        "</action></nop>",
        in_dialog("NOTIFY", 3, "SIP/2.0 200 OK", "Event: refer",
                  "Subscription-State: terminated;reason=noresource", sipfrag,
                  to_tag=";tag=[$bridge_tag]"),
        '  <recv request="BYE"/>',
        reply("200 OK"),
        referenced("from_tag"),
    ]  # fmt: skip


async def test_caller_asking_for_a_person_is_transferred_to_the_agent(
    sip_bridge: StartBridge, speak, tmp_path: Path
) -> None:
    agent_port = free_port()
    agent_uri = f"sip:agents@127.0.0.1:{agent_port}"
    running = await sip_bridge(_plans_with_agent(tmp_path, agent_uri), transfer_targets=[agent_uri])
    agent = await start_sipp(
        "-sf", str(callee_scenario(tmp_path / "agent.xml")), "-p", str(agent_port)
    )
    await asyncio.sleep(0.5)  # let the agent bind
    question = speak("I would like to speak to a person, please.", 8000)
    audio = g711_file(tmp_path / "person.raw", question, "PCMU", lead_s=1.0)
    scenario = caller_scenario(
        tmp_path / "transferee.xml",
        rtp_stream(audio, 0),
        *_transfer_to_agent(running.port),
        hangs_up=False,
    )
    result = await run_sipp("-sf", str(scenario), "-s", NUMBER, f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    reached = await finish(agent)
    assert reached.returncode == 0, reached.output  # the agent was called, answered, hung up

    (folder,) = await wait_for_records(running.records)
    lines = transcript(folder)
    assert "person" in caller_text(folder).lower()
    hold = next(x for x in _bot(folder) if x["text"] == HOLD)
    assert hold["heard"] == HOLD, hold  # the caller is moved only once the prompt has played
    assert [x["transfer"] for x in lines if "transfer" in x] == [agent_uri]
    assert [x["transfer_status"] for x in lines if "transfer_status" in x] == [202, 100, 200]
    assert summary(folder)["end_reason"] == "transferred"


async def test_opening_hours_heard_by_a_baresip_caller(
    sip_bridge: StartBridge, speak, transcribe, tmp_path: Path
) -> None:
    running = await sip_bridge()
    # The caller asks over the greeting (a barge-in), then listens to the answer.
    speech = speak("What are your opening hours?", 8000)
    audio = np.concatenate([np.zeros(8000 * 2, np.int16), speech, np.zeros(8000 * 10, np.int16)])
    samples, rate, output = await call_with_audio(
        tmp_path, f"sip:{NUMBER}@127.0.0.1:{running.port}", audio
    )
    heard = transcribe(samples, rate).lower()
    assert "monday to friday" in heard and "evening" in heard, (heard, output[-2000:])

    (folder,) = await wait_for_records(running.records)
    assert "opening hours" in caller_text(folder).lower()
    greeting, hours, *_ = _bot(folder)
    assert greeting["interrupted"] is True and greeting["heard"] != greeting["text"], greeting
    assert hours["text"] == HOURS and hours["interrupted"] is False, hours
    assert summary(folder)["dialplan"] == "customer-service"
