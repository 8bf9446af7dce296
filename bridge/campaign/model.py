"""The campaign data model shared by the store, the dialer, the service and the HTTP API.

Plain dataclasses, no I/O: the SQLite and Redis stores persist them, the API serialises them.
Times are Unix seconds (UTC) so they compare across processes and machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

CampaignState = Literal["draft", "running", "paused", "stopped", "completed"]
# "interrupted": the process died while the attempt was in flight. It counts as an attempt and
# is never dialled again as the same attempt; the retry policy decides whether a next one comes.
Outcome = Literal["answered", "voicemail", "busy", "no-answer", "failed", "dnc", "interrupted"]
# A contact is pending (waiting to be due), in-progress (an attempt in flight) or done.
ContactStatus = Literal["pending", "in-progress", "done"]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
STATES: tuple[CampaignState, ...] = get_args(CampaignState)
# Outcomes that end a contact whatever the retry delays say.
FINAL_OUTCOMES: frozenset[Outcome] = frozenset({"answered", "dnc"})


def default_retry_delays() -> dict[Outcome, float]:
    return {"busy": 300.0, "no-answer": 600.0, "failed": 600.0, "interrupted": 60.0}


@dataclass
class CampaignRules:
    """How a campaign dials. ``calling_hours`` are windows like ``"09:00-18:00"`` or
    ``"mon-fri 09:00-18:00"`` in each contact's time zone (empty: any time, see calendar.py).
    An outcome missing from ``retry_delays_s`` is not retried; "answered" and "dnc" never are."""

    max_concurrent: int = 1
    calls_per_second: float = 1.0
    calling_hours: list[str] = field(default_factory=list)
    retry_delays_s: dict[Outcome, float] = field(default_factory=default_retry_delays)
    max_attempts: int = 3

    def retry_delay(self, outcome: Outcome, attempts: int) -> float | None:
        """Seconds until the next attempt after ``attempts`` ended with ``outcome``; None when
        the contact is done."""
        if outcome in FINAL_OUTCOMES or attempts >= self.max_attempts:
            return None
        return self.retry_delays_s.get(outcome)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_concurrent": self.max_concurrent,
            "calls_per_second": self.calls_per_second,
            "calling_hours": list(self.calling_hours),
            "retry_delays_s": dict(self.retry_delays_s),
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignRules:
        """From :meth:`as_dict` output (trusted: user input goes through service.parse_rules)."""
        return cls(**data)


@dataclass
class Campaign:
    id: str
    name: str
    dialplan: str
    caller_id: str  # the From user of every call
    rules: CampaignRules
    state: CampaignState = "draft"
    created_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "dialplan": self.dialplan,
            "caller_id": self.caller_id,
            "rules": self.rules.as_dict(),
            "state": self.state,
            "created_at": self.created_at,
        }


@dataclass
class Contact:
    id: int  # unique within the store; 0 until stored
    campaign_id: str
    line: int  # where it came from: CSV line, or 1-based index of the JSON list
    to: str  # the SIP URI dialled
    timezone: str  # IANA zone the calling hours are evaluated in
    variables: dict[str, str] = field(default_factory=dict)  # become dialplan variables


@dataclass
class Attempt:
    """One call placed (or refused at dial time) for a contact; ``number`` counts from 1.
    ``outcome`` is None while in flight."""

    contact_id: int
    number: int
    started_at: float
    ended_at: float | None = None
    outcome: Outcome | None = None
    sip_status: int | None = None
    duration_s: float | None = None  # answered to hang-up
    record_id: str | None = None  # the call record folder (records.dir/<record_id>)
    collected: dict[str, Any] = field(default_factory=dict)  # variables the dialplan set
    amd: str | None = None  # answering-machine detection: human, machine, unknown
    instance: str = ""  # the bridge process that placed it

    def as_dict(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "number": self.number,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "sip_status": self.sip_status,
            "duration_s": self.duration_s,
            "record_id": self.record_id,
            "collected": self.collected,
            "amd": self.amd,
            "instance": self.instance,
        }


@dataclass(frozen=True)
class RowProblem:
    """A rejected contact row: its line (CSV line, or 1-based index in a JSON list; 1 is the
    CSV header for file-wide problems such as a missing column) and why."""

    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass
class ImportReport:
    accepted: int
    problems: list[RowProblem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "problems": [p.as_dict() for p in self.problems]}


class CampaignError(Exception):
    """Bad input for a campaign (spec, contacts) or an impossible request (unknown id, a state
    change not allowed); ``problems`` lists bad contact rows, ``status`` the HTTP status."""

    def __init__(
        self, message: str, problems: list[RowProblem] | None = None, status: int = 422
    ) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.status = status
