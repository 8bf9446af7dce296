"""Helpers for whole SIP calls against the bridge: sipp scenarios with media, caller audio
files, and reading the call records the bridge leaves behind."""

from __future__ import annotations

import asyncio
import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.media.g711 import codec_by_name
from tests.peers.availability import in_ci, require_binary
from tests.sip.sipp import SCENARIOS, free_port, start_sipp

SILENCE_8K = np.zeros(8000, np.int16)


def g711_file(path: Path, samples: np.ndarray, codec: str, lead_s: float = 0.5) -> Path:
    """Headerless G.711 of ``samples`` (8 kHz) after ``lead_s`` of silence, for rtp_stream."""
    found = codec_by_name(codec)
    assert found is not None
    lead = np.zeros(int(8000 * lead_s), np.int16)
    path.write_bytes(found.encode(np.concatenate([lead, samples, SILENCE_8K])))
    return path


def rtp_stream(path: Path, payload_type: int, loops: int = 1) -> str:
    """A sipp step streaming a headerless G.711 file (``loops=-1``: until the call ends)."""
    return f'  <nop><action><exec rtp_stream="{path},{loops},{payload_type}"/></action></nop>'


def pause(ms: int) -> str:
    return f'  <pause milliseconds="{ms}"/>'


def dtmf_pcap(key: str) -> str:
    """A sipp step playing sipp's shipped RFC 4733 pcap of ``key`` ("1", "pound"...). The pcap
    player needs raw sockets: without root the test fails under CI and skips elsewhere."""
    if os.geteuid() != 0:
        message = "sipp's pcap player needs root (raw sockets)"
        pytest.fail(message) if in_ci() else pytest.skip(message)
    pcaps = Path(require_binary("sipp")).resolve().parent.parent / "share" / "sip-tester"
    return f'  <nop><action><exec play_pcap_audio="{pcaps}/dtmf_2833_{key}.pcap"/></action></nop>'


def callee_scenario(path: Path, *steps: str) -> Path:
    """sipp's callee.xml answering with PCMU, running ``steps`` after the ACK."""
    template = (SCENARIOS / "callee.xml").read_text()
    path.write_text(template.format(steps="\n".join(steps)))
    return path


async def start_callee(path: Path, *steps: str) -> tuple[asyncio.subprocess.Process, int]:
    """sipp answering one call with :func:`callee_scenario` on a free port (bound on return)."""
    port = free_port()
    sipp = await start_sipp("-sf", str(callee_scenario(path, *steps)), "-p", str(port))
    await asyncio.sleep(0.5)  # let sipp bind
    return sipp, port


def caller_scenario(path: Path, *steps: str, codec: str = "PCMU", hangs_up: bool = True) -> Path:
    """sipp's caller.xml offering ``codec`` with ``steps`` after the ACK, then a BYE unless
    ``hangs_up`` is False (the steps then end the call themselves)."""
    found = codec_by_name(codec)
    assert found is not None
    template = (SCENARIOS / "caller.xml").read_text()
    if not hangs_up:
        template = template.rpartition("{steps}")[0] + "{steps}\n</scenario>\n"
    path.write_text(
        template.format(pt=found.payload_type, codec=found.name, steps="\n".join(steps))
    )
    return path


async def wait_for_records(records: Path, count: int = 1, timeout: float = 20) -> list[Path]:
    """Folders of the first ``count`` finished calls (call.json has an end reason)."""
    deadline = time.monotonic() + timeout
    while True:
        done = [
            meta.parent
            for meta in sorted(records.glob("*/call.json"))
            if json.loads(meta.read_text()).get("end_reason")
        ]
        if len(done) >= count:
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(done)} of {count} call records finished in {records}")
        await asyncio.sleep(0.1)


def transcript(folder: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (folder / "transcript.jsonl").read_text().splitlines()]


def caller_text(folder: Path) -> str:
    return " ".join(
        str(x["text"]) for x in transcript(folder) if x["who"] == "caller" and "text" in x
    )


def summary(folder: Path) -> dict[str, object]:
    return json.loads((folder / "call.json").read_text())


def expect_header(header: str, regexp: str, name: str) -> str:
    """A recv action failing the call unless ``header`` matches ``regexp``; the scenario must
    also hold ``referenced(name)`` (sipp refuses variables that are set but never used)."""
    return (
        f'<action><ereg regexp="{regexp}" search_in="hdr" header="{header}:" check_it="true"'
        f' assign_to="{name}"/></action>'
    )


def referenced(name: str) -> str:
    return f'  <Reference variables="{name}"/>'


def in_dialog(
    method: str, cseq: int, body: str = "", *headers: str, to_tag: str = "[peer_tag_param]"
) -> str:
    """A sipp step sending an in-dialog request of the caller (From sipp, To the bridge).
    ``to_tag``: the bridge's tag, when sipp has since talked to another peer (a transfer)."""
    extra = "".join(f"      {h}\n" for h in headers)
    return f"""  <send retrans="500">
    <![CDATA[

      {method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
{extra}      Content-Length: [len]

      {body}
    ]]>
  </send>
  <recv response="200"/>"""


def reply(status: str, *headers: str) -> str:
    """A sipp step answering the request just received."""
    extra = "".join(f"      {h}\n" for h in headers)
    return f"""  <send>
    <![CDATA[

      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
{extra}      Content-Length: 0

    ]]>
  </send>"""


def caller_channel(folder: Path) -> tuple[np.ndarray, int]:
    """The caller's side of a call's stereo recording (left channel), and its rate."""
    with wave.open(str(folder / "recording.wav")) as wav:
        rate = wav.getframerate()
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).reshape(-1, 2)
    return stereo[:, 0].astype(np.float64), rate


def loudest_second(audio: np.ndarray, rate: int) -> np.ndarray:
    energy = np.convolve(audio**2, np.ones(rate), "valid")
    start = int(np.argmax(energy))
    return audio[start : start + rate]
