"""SIP media capacity: ``python -m bench.sip_capacity --calls N --seconds S``.

Measures the RTP path, not the speech engines: the bridge runs in its own process with cheap
fake engines at the phone's 8 kHz (canned tone audio per word of every prompt; a recogniser
that hears a question in any loud audio, so the bot keeps answering; the WebRTC VAD; records
at 8 kHz), and sipp holds 1, 2, 4 ... N calls at once (or the ``--levels`` given), each
streaming a tone-and-silence PCMU loop at the bridge for S seconds while the bridge talks back.

Pass criterion per level: every call's outbound packet send-time error (when the packet left
versus its 20 ms grid point, from each ``call.json``) has p99 within +5 ms and minimum above
-5 ms, no tick was skipped, and sipp completed every call. Reported per level: those figures
(worst call, median call), CPU per call of the bridge and its media workers (% of one core;
also each process's share, and sipp's own), RSS added per call during the hold, caller packets
lost or too late for playout, and whether the level passed. ``--workers N`` spreads the calls
over N media worker processes (``sip.media_workers``). ``--profile PATH`` runs the bridge under
cProfile (with ``--workers 0``: workers are not profiled), writes the stats to PATH and prints
the top functions (cProfile slows the bridge: profile runs measure where time goes, not
capacity).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.__main__ import RESULTS, free_port, process_cpu_seconds, process_rss_mb
from bridge.config import Config, SipConfig, SipRateLimitConfig
from bridge.media.g711 import ulaw_encode
from bridge.server import Bridge
from bridge.sip.front import SipFront
from bridge.sip.media_workers import MediaWorkers
from bridge.speech.factory import SpeechEngines
from tests.emulator.fakes import FixedASR, ToneTTS
from tests.sip.calls import caller_scenario, pause, rtp_stream

REPO = Path(__file__).resolve().parent.parent
LATENESS_LIMIT_MS = 5.0
QUESTION = "what are your opening hours"  # an intent that answers and keeps the call up


class PhoneASR(FixedASR):
    """The fake recogniser at the phone's own rate, as ``paraformer-realtime-8k-v2`` runs."""

    sample_rate = 8000


class PhoneTTS(ToneTTS):
    """The fake synthesiser at the phone's own rate: no resampling on the way out either."""

    sample_rate = 8000


async def fake_engines(config: Config | None = None) -> SpeechEngines:
    """The cheap engines, for the bridge and (by reference) for each media worker."""
    return SpeechEngines(asr=PhoneASR(QUESTION), tts=PhoneTTS())


async def serve_fake(sip_port: int, rtp_ports: str, records: str, workers: int) -> None:
    """The bridge's SIP front door on fake engines (calls spread over ``workers`` media worker
    processes, or in the bridge's own process with 0), until SIGTERM."""
    config = Config()
    config.dialog.dialplans_dir = str(REPO / "dialplans")
    config.records.dir = records
    config.records.sample_rate = 8000  # phone audio recorded at its own rate
    config.speech.vad.engine = "webrtc"
    config.calls.max_concurrent = 10_000
    config.sip = SipConfig(
        port=sip_port,
        rtp_ports=rtp_ports,
        max_calls=10_000,
        rate_limit=SipRateLimitConfig(per_second=1000, burst=1000),
        no_rtp_timeout_s=60,
        media_workers=workers,
    )
    bridge = Bridge(config)
    bridge.engines = await fake_engines()
    front = SipFront(bridge, config.sip, make_engines=fake_engines)
    await front.start()
    while isinstance(front.host, MediaWorkers) and front.host.ready_workers < workers:
        await asyncio.sleep(0.1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    gc.freeze()  # as Bridge.load_engines does once the engines are up
    print("ready", flush=True)
    await stop.wait()
    await front.close()
    await bridge.shutdown()


def caller_audio(path: Path) -> Path:
    """One second of a 300 Hz tone, one of silence: speech-like on/off for the VAD and ASR."""
    t = np.arange(8000) / 8000
    tone = (6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    path.write_bytes(ulaw_encode(np.concatenate([tone, np.zeros(8000, np.int16)])))
    return path


def run_level(
    calls: int, seconds: float, sip_port: int, pid: int, workdir: Path
) -> dict[str, object]:
    records = workdir / "records"
    before = {p.parent for p in records.glob("*/call.json")}
    audio = caller_audio(workdir / "tone.raw")
    scenario = caller_scenario(
        workdir / f"load{calls}.xml",
        rtp_stream(audio, 0, loops=-1),
        pause(int(seconds * 1000)),
    )
    rate = max(1, min(calls, 25))
    command = [
        "sipp", "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port()),
        "-sf", str(scenario), "-s", "bot", "-r", str(rate), "-l", str(calls), "-m", str(calls),
        "-nostdin", "-timeout", f"{int(seconds) + 60}s", "-timeout_error",
        f"127.0.0.1:{sip_port}",
    ]  # fmt: skip
    sipp = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ramp = calls / rate + 1.0  # all calls are up after this
    pids = [pid, *child_pids(pid)]  # the bridge and its media workers
    rss_idle = sum(map(process_rss_mb, pids))
    time.sleep(ramp)
    cpu0, t0 = [process_cpu_seconds(p) for p in pids], time.monotonic()
    sipp_cpu0 = process_cpu_seconds(sipp.pid)
    rss_peak = rss_idle
    while (held := time.monotonic() - t0) < max(0.5, seconds - ramp - 1.0):
        time.sleep(0.5)
        rss_peak = max(rss_peak, sum(map(process_rss_mb, pids)))
    cpus = [process_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    sipp_cpu = process_cpu_seconds(sipp.pid) - sipp_cpu0
    cpu = sum(cpus)
    output, _ = sipp.communicate(timeout=seconds + 120)
    folders = _wait_records(records, before, calls)
    lateness = [json.loads((f / "call.json").read_text())["metrics"]["rtp"] for f in folders]
    ticks = [r["send_lateness"] for r in lateness]
    worst_p99 = max((t.get("p99_ms", 0.0) for t in ticks), default=float("nan"))
    worst_min = min((t.get("min_ms", 0.0) for t in ticks), default=float("nan"))
    skipped = sum(t["skipped"] for t in ticks)
    jitter = [r["jitter"] for r in lateness]
    missing = sum(j["lost"] + j["late"] for j in jitter)
    expected = sum(j["received"] + j["lost"] for j in jitter)
    ok = (
        sipp.returncode == 0
        and len(folders) == calls
        and worst_p99 <= LATENESS_LIMIT_MS
        and worst_min >= -LATENESS_LIMIT_MS
        and skipped == 0
    )
    return {
        "calls": calls,
        "completed": len(folders),
        "sipp_exit": sipp.returncode,
        "worst_p99_lateness_ms": round(worst_p99, 2),
        "median_p99_lateness_ms": round(float(np.median([t.get("p99_ms", 0) for t in ticks])), 2)
        if ticks
        else None,
        "worst_min_lateness_ms": round(worst_min, 2),
        "skipped_ticks": skipped,
        "cpu_pct_per_call": round(100 * cpu / held / calls, 2),
        "cpu_pct_total": round(100 * cpu / held, 1),
        "cpu_pct_by_process": [round(100 * c / held, 1) for c in cpus],
        "sipp_cpu_pct": round(100 * sipp_cpu / held, 1),
        "rss_mb_per_call": round((rss_peak - rss_idle) / calls, 2),
        "loss_pct": round(100 * missing / expected, 2) if expected else None,
        "packets_sent": sum(r["sent"] for r in lateness),
        "packets_received": sum(r["received"] for r in lateness),
        "pass": ok,
        "sipp_tail": "" if ok else output.decode(errors="replace")[-800:],
    }


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (its media workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _wait_records(records: Path, before: set[Path], count: int, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        done = [
            meta.parent
            for meta in records.glob("*/call.json")
            if meta.parent not in before and json.loads(meta.read_text()).get("end_reason")
        ]
        if len(done) >= count or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def levels(most: int) -> list[int]:
    out, n = [], 1
    while n < most:
        out.append(n)
        n *= 2
    return [*out, most]


def print_table(rows: list[dict[str, object]]) -> None:
    columns = (
        "calls", "completed", "worst_p99_lateness_ms", "median_p99_lateness_ms",
        "worst_min_lateness_ms", "skipped_ticks", "cpu_pct_per_call", "cpu_pct_total",
        "rss_mb_per_call", "cpu_pct_by_process", "sipp_cpu_pct", "loss_pct", "pass",
    )  # fmt: skip
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))


def top_functions(path: Path, count: int = 25) -> list[str]:
    """The functions with the most own time in a cProfile dump, one formatted line each."""
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(count)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return [line for line in lines[start:] if line.strip() and "epoll" not in line]  # idle


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sip_capacity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=16, help="most simultaneous calls to try")
    parser.add_argument(
        "--levels", type=int, nargs="+", help="exactly these numbers of calls, instead of doubling"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each call lasts")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the bridge into this file"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every level even after one fails (CPU per call is still measured)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run the bridge at real-time (SCHED_RR) priority, as media servers are deployed"
        " (asterisk -p, freeswitch -rp), so other load on the machine does not delay its clock",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="media worker processes running the calls (sip.media_workers); 0: the bridge's own",
    )
    parser.add_argument(
        "--serve",
        nargs=4,
        metavar=("SIP_PORT", "RTP_PORTS", "RECORDS", "WORKERS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.serve:
        if args.realtime:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
        profiler = cProfile.Profile() if args.profile else None
        with profiler or contextlib.nullcontext():
            sip_port, rtp_ports, records, workers = args.serve
            asyncio.run(serve_fake(int(sip_port), rtp_ports, records, int(workers)))
        if profiler is not None:
            profiler.dump_stats(args.profile)
        return
    with tempfile.TemporaryDirectory(prefix="sip-bench-") as tmp:
        workdir = Path(tmp)
        sip_port = free_port()
        command = [
            sys.executable, "-m", "bench.sip_capacity",
            "--serve", str(sip_port), "20000-29999", str(workdir / "records"), str(args.workers),
        ]  # fmt: skip
        if args.profile:
            command += ["--profile", str(args.profile.resolve())]
        if args.realtime:
            command.append("--realtime")
        log = workdir / "bridge.log"
        with log.open("wb") as stderr:
            server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != b"ready":
                raise SystemExit(f"the bridge did not start:\n{log.read_text()[-2000:]}")
            rows = []
            for calls in args.levels or levels(args.calls):
                row = run_level(calls, args.seconds, sip_port, server.pid, workdir)
                print_table([row])
                rows.append(row)
                if not row["pass"] and not args.keep_going:
                    break
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print()
    print_table(rows)
    passed = [r["calls"] for r in rows if r["pass"]]
    best = max(passed, default=0)
    print(f"largest level held within ±{LATENESS_LIMIT_MS:.0f} ms p99 send lateness: {best} calls")
    out = args.json or RESULTS / f"sip-capacity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "benchmark": "sip-capacity",
        "seconds": args.seconds,
        "realtime": args.realtime,
        "media_workers": args.workers,
        "max_calls_within_limit": best,
        "levels": rows,
    }
    if args.profile:
        report["profile_top"] = top_functions(args.profile)
        print("\nwhere the bridge's time went (cProfile, own time):")
        print("\n".join(report["profile_top"]))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
