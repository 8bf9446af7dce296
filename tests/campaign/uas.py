"""sipp far ends for campaign calls: one long-running UAS per behaviour (answer and play audio,
486 busy, ring until cancelled), each logging every SIP message it sends or receives, so tests
measure what the dialer did from the SIP traffic itself."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.availability import require_binary
from tests.sip.sipp import SCENARIOS, free_port

HERE = Path(__file__).parent
BUSY = SCENARIOS / "busy.xml"
RING = HERE / "scenarios" / "ring.xml"


@dataclass
class Message:
    at: float  # Unix time
    direction: str  # R received, S sent
    call_id: str
    first_line: str

    @property
    def user(self) -> str:
        """The Request-URI user of a request."""
        return self.first_line.split(" ")[1].split(":", 1)[1].split("@")[0]


@dataclass
class FarEnd:
    """A sipp UAS on 127.0.0.1:``port`` serving any number of calls."""

    name: str
    port: int
    log: Path
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    def uri(self, user: str) -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    def messages(self) -> list[Message]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 7:
                out.append(Message(float(parts[2]), parts[3], parts[4], parts[6]))
        return out

    def invites(self) -> list[Message]:
        """Each INVITE received once (retransmissions dropped), in order."""
        seen: set[str] = set()
        first = []
        for message in self.messages():
            invite = message.direction == "R" and message.first_line.startswith("INVITE ")
            if invite and message.call_id not in seen:
                seen.add(message.call_id)
                first.append(message)
        return first

    def call_spans(self) -> list[tuple[float, float]]:
        """(INVITE received, call over) per call: over at a final failure response sent or a
        BYE received; calls still up count until now."""
        starts = {m.call_id: m.at for m in self.invites()}
        ends: dict[str, float] = {}
        for m in self.messages():
            final = m.direction == "S" and m.first_line.startswith(("SIP/2.0 4", "SIP/2.0 5"))
            bye = m.direction == "R" and m.first_line.startswith("BYE ")
            if (final or bye) and m.call_id not in ends:
                ends[m.call_id] = m.at
        return [(start, ends.get(cid, float("inf"))) for cid, start in starts.items()]


async def start_far_end(name: str, scenario: Path, folder: Path) -> FarEnd:
    binary = require_binary("sipp")
    far = FarEnd(name, free_port(), folder / f"{name}.log")
    far.process = await asyncio.create_subprocess_exec(
        binary, "-sf", str(scenario),
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(far.port), "-mp", str(free_port()),
        "-nostdin", "-trace_shortmsg", "-shortmessage_file", str(far.log),
        "-recv_timeout", "60000",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return far


async def stop_far_ends(far_ends: list[FarEnd]) -> None:
    for far in far_ends:
        if far.process is not None and far.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                far.process.kill()
            await far.process.wait()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most calls up at one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most
