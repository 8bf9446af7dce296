"""WebRTC call benchmark: ``python -m bench [--calls 1 2 4] [--json PATH]``.

Starts ``bridge serve`` in its own process (so its CPU and memory are measured alone), then for
each concurrency level runs that many aiortc callers at once. Every caller waits for the
greeting, talks over it 1.5 s in (barge-in), and waits for the answer to its question.

Reported per level:
- turn latency, server side: caller stops speaking (VAD end of speech, dated back to where the
  silence began) → first bot frame sent; from each call's ``call.json``;
- turn latency, caller side: last speech frame sent → first loud bot frame received (adds the
  network and the caller's own jitter buffer);
- barge-in cut-off, server side: caller speech onset (VAD, dated back to when that audio
  arrived) → last bot frame sent; from ``call.json``;
- barge-in cut-off, caller side: first speech frame sent → last loud greeting frame received
  (adds the network and the caller's jitter buffer);
- CPU ms of the bridge process per second of call, and RSS added per concurrent call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from bridge.webrtc.ice import use_ice_host_addresses
from tests.e2e.webrtc_caller import RATE, WebRtcCaller

QUESTION = "What are your opening hours?"
RESULTS = Path(__file__).parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class CallSample:
    turn_ms_caller: float | None = None
    barge_in_ms: float | None = None
    seconds: float = 0.0
    call_id: str = ""


@dataclass
class LevelResult:
    calls: int
    samples: list[CallSample] = field(default_factory=list)
    turn_ms_server: list[float] = field(default_factory=list)
    barge_in_ms_server: list[float] = field(default_factory=list)
    cpu_ms_per_call_second: float = 0.0
    rss_mb_per_call: float = 0.0
    failures: int = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.array(values), q))


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def caller_speech(text: str = QUESTION) -> np.ndarray:
    from bridge.media.resample import Resampler
    from bridge.speech.local.runtime import LocalRuntime

    voice = LocalRuntime().piper()
    pcm = np.concatenate([c.audio_int16_array for c in voice.synthesize(text)])
    resampler = Resampler(voice.config.sample_rate, RATE)
    return np.concatenate([resampler.process(pcm), resampler.flush()])


async def one_call(base_url: str, speech: np.ndarray) -> CallSample:
    caller = WebRtcCaller(base_url)
    started = time.monotonic()
    await caller.connect()
    try:
        while not caller.received.loud_frames():
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)
        caller.mic.say(speech)
        cut = await caller.wait_event(lambda e: e.get("who") == "bot" and e.get("final"), 60)
        await caller.wait_event(
            lambda e: e.get("who") == "bot" and e.get("final") and e is not cut, 90
        )
    finally:
        await caller.close()
    onset, spoken_end = caller.mic.speech_started_at[0], caller.mic.speech_ended_at[0]
    loud = caller.received.loud_frames()
    greeting_tail = [t for t in loud if onset <= t < spoken_end]
    answer = [t for t in loud if t > spoken_end]
    return CallSample(
        turn_ms_caller=(answer[0] - spoken_end) * 1000 if answer else None,
        barge_in_ms=((max(greeting_tail) if greeting_tail else onset) - onset) * 1000,
        seconds=time.monotonic() - started,
        call_id=caller.call_id,
    )


def server_metric(records: Path, call_ids: list[str], name: str) -> list[float]:
    values: list[float] = []
    for call_id in call_ids:
        for meta in records.glob(f"*{call_id}*/call.json"):
            values.extend(json.loads(meta.read_text())["metrics"].get(name, []))
    return values


async def run_level(
    base_url: str, pid: int, records: Path, calls: int, speech: np.ndarray
) -> LevelResult:
    result = LevelResult(calls)
    rss_before = process_rss_mb(pid)
    cpu_before = process_cpu_seconds(pid)
    peak_rss = rss_before

    async def watch_rss() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, process_rss_mb(pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_rss())
    outcomes = await asyncio.gather(
        *(one_call(base_url, speech) for _ in range(calls)), return_exceptions=True
    )
    watcher.cancel()
    cpu = process_cpu_seconds(pid) - cpu_before
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.failures += 1
            print(f"  call failed: {outcome!r}", file=sys.stderr)
        else:
            result.samples.append(outcome)
    call_seconds = sum(s.seconds for s in result.samples)
    result.cpu_ms_per_call_second = cpu * 1000 / call_seconds if call_seconds else 0.0
    result.rss_mb_per_call = (peak_rss - rss_before) / calls
    await asyncio.sleep(1.0)  # let the bridge write the call records
    call_ids = [s.call_id for s in result.samples]
    result.turn_ms_server = server_metric(records, call_ids, "turn_latency_ms")
    result.barge_in_ms_server = server_metric(records, call_ids, "barge_in_ms")
    return result


def summarise(result: LevelResult) -> dict[str, object]:
    def pct(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 1)

    turn_caller = [s.turn_ms_caller for s in result.samples if s.turn_ms_caller is not None]
    barge = [s.barge_in_ms for s in result.samples if s.barge_in_ms is not None]
    return {
        "calls": result.calls,
        "failures": result.failures,
        "turn_ms_server_p50": pct(result.turn_ms_server, 50),
        "turn_ms_server_p95": pct(result.turn_ms_server, 95),
        "turn_ms_caller_p50": pct(turn_caller, 50),
        "turn_ms_caller_p95": pct(turn_caller, 95),
        "barge_in_ms_server_p50": pct(result.barge_in_ms_server, 50),
        "barge_in_ms_server_p95": pct(result.barge_in_ms_server, 95),
        "barge_in_ms_caller_p50": pct(barge, 50),
        "barge_in_ms_caller_p95": pct(barge, 95),
        "cpu_ms_per_call_second": round(result.cpu_ms_per_call_second, 1),
        "rss_mb_per_call": round(result.rss_mb_per_call, 1),
    }


def print_table(rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))


async def main_async(args: argparse.Namespace) -> list[dict[str, object]]:
    use_ice_host_addresses(["127.0.0.1"])
    port = free_port()
    records = Path(tempfile.mkdtemp(prefix="bench-records-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "--log-level", "WARNING", "serve",
         "--http-port", str(port), "--records-dir", str(records), "--ice-host", "127.0.0.1"],
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, object]] = []
    try:
        await wait_healthy(base_url, server)
        speech = caller_speech()
        await run_level(base_url, server.pid, records, 1, speech)  # warm-up, not reported
        for repeat in range(args.repeats):
            for calls in args.calls:
                print(f"level {calls} call(s), round {repeat + 1}...", file=sys.stderr)
                result = await run_level(base_url, server.pid, records, calls, speech)
                rows.append(summarise(result))
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        server.kill()
    return rows


async def wait_healthy(base_url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError("bridge exited during start-up")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base_url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.5)
    raise TimeoutError("bridge did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per concurrency level")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    print_table(rows)
    out = args.json or RESULTS / f"webrtc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "webrtc-calls", "levels": rows}, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
