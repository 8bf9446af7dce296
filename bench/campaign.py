"""Campaign dialer: ``python -m bench.campaign [--contacts N] [--concurrency C] [--rates R,...]``.

Runs the bridge's campaign service (SQLite store, local limits, the SIP front door) in this
process on fake engines (a tone per word of every prompt, a recogniser that always hears the
same question, the WebRTC VAD: see bench/sip_capacity.py), against one sipp far end that answers
every call with a short burst of tone (a fake "hello?") and then silence. The campaign's
dialplan runs answering-machine detection, says one sentence and hangs up: about 5 s a call.

* Throughput: one campaign of N contacts with at most C calls at once and no effective rate
  limit: calls placed and completed per minute, from start to the campaign's completion.
* Scheduling accuracy: for each calls-per-second limit R, a campaign of about 10 s of calls
  with room for all of them at once; the rate measured from the INVITEs the far end received
  (its message log), against the limit: pass within ±10 %, and the shortest gap between two
  INVITEs. Beside it, the rate of the dialer's own attempt start times: when the two differ,
  the process was too busy to send what the dialer had decided on time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from bench.__main__ import RESULTS, free_port
from bridge.campaign.service import CampaignService, open_campaigns
from bridge.config import Config, SipConfig, SipRateLimitConfig
from bridge.media.g711 import ulaw_encode
from bridge.server import Bridge
from bridge.sip.front import SipFront
from bridge.speech.factory import SpeechEngines
from tests.emulator.fakes import FixedASR, ToneTTS
from tests.sip.calls import callee_scenario, rtp_stream

ACCURACY = 0.10
DIALPLAN = """\
name: bench-campaign
start: detect
steps:
  detect:
    amd: {timeout_s: 3, on_human: remind, on_machine: remind}
  remind:
    say: Hello {{ name }}, this is your reminder. Goodbye.
    barge_in: false
    hangup: done
"""
# sipp's message log dates every message: a dashed line with the time, then what happened.
STAMP = re.compile(r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")


def hello_audio(path: Path) -> Path:
    """0.4 s of a 300 Hz tone, then silence: a short answer, then waiting for the bot."""
    t = np.arange(3200) / 8000
    tone = (6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    path.write_bytes(ulaw_encode(np.concatenate([tone, np.zeros(8000 * 10, np.int16)])))
    return path


async def far_end(workdir: Path, calls: int) -> tuple[asyncio.subprocess.Process, int, Path]:
    """A sipp UAS answering ``calls`` calls; its port and message log."""
    port = free_port()
    scenario = callee_scenario(
        workdir / "callee.xml", rtp_stream(hello_audio(workdir / "hello.raw"), 0)
    )
    log = workdir / f"far-end-{port}.log"
    process = await asyncio.create_subprocess_exec(
        "sipp", "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port),
        "-mp", str(free_port()), "-sf", str(scenario), "-m", str(calls), "-nostdin",
        "-trace_msg", "-message_file", str(log), "-timeout", "600s",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let sipp bind
    return process, port, log


def invite_times(log: Path) -> list[float]:
    """When the far end first received each call's INVITE (Unix seconds; a retransmission of
    the same Call-ID is not a new call)."""
    first: dict[str, float] = {}
    stamp: float | None = None
    invite = False
    for line in log.read_text(errors="replace").splitlines():
        match = STAMP.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            invite = False
        elif line.startswith("INVITE ") and stamp is not None:
            invite = True
        elif invite and line.lower().startswith("call-id:"):
            first.setdefault(line.split(":", 1)[1].strip(), stamp)  # type: ignore[arg-type]
            invite = False
    return sorted(first.values())


def rate_of(times: list[float]) -> float:
    """Starts per second over a run of start times."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def run_campaign(
    service: CampaignService, port: int, contacts: int, concurrency: int, rate: float
) -> tuple[str, float, dict[str, int]]:
    """Create and run one campaign to completion; its id, wall time and outcome counts."""
    campaign, _ = await service.create(
        {
            "name": f"bench {contacts}x{concurrency}@{rate:g}/s",
            "dialplan": "bench-campaign",
            "rules": {"max_concurrent": concurrency, "calls_per_second": rate, "max_attempts": 1},
        },
        contacts=[
            {"to": f"sip:c{i}@127.0.0.1:{port}", "name": f"contact {i}"} for i in range(contacts)
        ],
    )
    started = time.monotonic()
    await service.start(campaign.id)
    while (status := await service.status(campaign.id))["state"] != "completed":
        if time.monotonic() - started > contacts * 10 + 60:
            raise TimeoutError(status)
        await asyncio.sleep(0.2)
    return campaign.id, time.monotonic() - started, status["counts"]


async def throughput(
    service: CampaignService, workdir: Path, contacts: int, concurrency: int
) -> dict[str, object]:
    sipp, port, _ = await far_end(workdir, contacts)
    _, seconds, counts = await run_campaign(service, port, contacts, concurrency, 100.0)
    await asyncio.wait_for(sipp.wait(), 60)
    completed = counts["answered"] + counts["voicemail"]  # calls the dialplan ended
    return {
        "contacts": contacts,
        "max_concurrent": concurrency,
        "seconds": round(seconds, 1),
        "placed_per_min": round(contacts / seconds * 60, 1),
        "completed_per_min": round(completed / seconds * 60, 1),
        "answered": counts["answered"],
        "voicemail": counts["voicemail"],
        "failed": contacts - completed,
        "far_end_exit": sipp.returncode,
        "load_avg": round(os.getloadavg()[0], 1),  # the machine is shared: context for figures
    }


async def scheduling(service: CampaignService, workdir: Path, rate: float) -> dict[str, object]:
    contacts = max(5, round(rate * 10) + 1)
    sipp, port, log = await far_end(workdir, contacts)
    campaign_id, _, _ = await run_campaign(service, port, contacts, contacts, rate)
    await asyncio.wait_for(sipp.wait(), 60)
    times = invite_times(log)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    measured = rate_of(times)
    error = measured / rate - 1
    export = json.loads(await service.export(campaign_id, "json"))
    decided = sorted(a["started_at"] for c in export["contacts"] for a in c["attempt_log"])
    return {
        "limit_cps": rate,
        "calls": len(times),
        "measured_cps": round(measured, 3),
        "error_pct": round(100 * error, 1),
        "min_gap_s": round(min(gaps), 3) if gaps else None,
        "dialer_cps": round(rate_of(decided), 3),
        "pass": len(times) == contacts and abs(error) <= ACCURACY,
        "load_avg": round(os.getloadavg()[0], 1),
    }


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    (workdir / "dialplans").mkdir()
    (workdir / "dialplans" / "bench-campaign.yaml").write_text(DIALPLAN)
    config = Config()
    config.dialog.dialplans_dir = str(workdir / "dialplans")
    config.records.dir = str(workdir / "records")
    config.campaigns.dir = str(workdir / "campaigns")
    config.campaigns.poll_s = 0.2
    config.speech.vad.engine = "webrtc"
    config.calls.max_concurrent = 10_000
    rtp = free_port() & ~1
    config.sip = SipConfig(
        port=0,
        rtp_ports=f"{rtp}-{rtp + 2000}",
        max_calls=10_000,
        rate_limit=SipRateLimitConfig(per_second=1000, burst=1000),
        outbound_targets=["sip:*@127.0.0.1"],
    )
    bridge = Bridge(config)
    bridge.engines = SpeechEngines(asr=FixedASR("what are your opening hours"), tts=ToneTTS())
    front = SipFront(bridge, config.sip)
    await front.start()
    service = await open_campaigns(config, bridge, front)
    runner = asyncio.create_task(service.run())
    try:
        load = await throughput(service, workdir, args.contacts, args.concurrency)
        print_rows([load])
        rates = []
        for rate in args.rates:
            rates.append(await scheduling(service, workdir, rate))
            print_rows(rates[-1:])
    finally:
        runner.cancel()
        await service.close()
        await front.close()
        await bridge.shutdown()
    return {"throughput": load, "scheduling": rates}


def print_rows(rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.campaign", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--contacts", type=int, default=60, help="contacts in the load campaign")
    parser.add_argument("--concurrency", type=int, default=10, help="its max_concurrent")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[1.0, 2.0, 5.0],
        help="calls-per-second limits to check, comma-separated",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the tables are the output
    with tempfile.TemporaryDirectory(prefix="campaign-bench-") as tmp:
        results = asyncio.run(main_async(args, Path(tmp)))
    print()
    print_rows([results["throughput"]])  # type: ignore[list-item]
    print()
    print_rows(results["scheduling"])  # type: ignore[arg-type]
    out = args.json or RESULTS / f"campaign-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **results}, indent=2, default=str))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
