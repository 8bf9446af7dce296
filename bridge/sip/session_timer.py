"""Session timers (RFC 4028): keep-alive of a call's signalling, sans-I/O.

One side (the refresher) re-sends a re-INVITE or UPDATE every half interval; the other hangs up
with a BYE when none arrives before the session expires, so a call whose far end vanished
without a BYE (a crashed PBX, a lost route) does not stay up and hold a port forever.
Negotiation happens on every INVITE, re-INVITE and UPDATE and their 2xx; the clock is the
agent's ``now``, passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sip.headers import Headers, get_param, parse_params

DEFAULT_MIN_SE = 90  # RFC 4028 §4: nobody may ask for less
REFRESHERS = ("uac", "uas")


class TooSmall(ValueError):
    """A Session-Expires below our Min-SE: answer 422 with ``Min-SE: min_se``."""

    def __init__(self, min_se: int) -> None:
        super().__init__(f"Session-Expires below Min-SE {min_se}")
        self.min_se = min_se


def parse_session_expires(value: str) -> tuple[int, str | None]:
    """``1800;refresher=uac`` → ``(1800, "uac")``; raise ``ValueError`` when malformed."""
    number, _, params = value.partition(";")
    number = number.strip()
    if not (number.isascii() and number.isdigit()) or len(number) > 10 or int(number) < 1:
        raise ValueError(f"bad Session-Expires: {value!r}")
    refresher = get_param(parse_params(params), "refresher")
    refresher = refresher.lower() if refresher else None
    if refresher is not None and refresher not in REFRESHERS:
        raise ValueError(f"bad refresher in Session-Expires: {value!r}")
    return int(number), refresher


def supports(headers: Headers, option: str) -> bool:
    """Whether ``option`` is in the message's Supported or Require list."""
    names = [*headers.get_all("Supported"), *headers.get_all("Require")]
    return option in (name.strip().lower() for name in names)


@dataclass
class SessionTimer:
    """The agreed interval and whether we refresh; deadlines count from the last refresh.

    The refresher refreshes at half the interval; the other side gives up at the interval minus
    min(32 s, a third) (§10), when :meth:`due` says "expire". A refresher whose refresh got no
    2xx gives up at the same point. ``refresher=`` names a role in one transaction (the
    sender of the request is its ``uac``), so :meth:`header` asks which side we are in it.
    """

    interval: int
    ours: bool  # we refresh
    started: float = 0.0
    refreshing: bool = False  # our refresh is in flight

    @property
    def deadline(self) -> float:
        if self.ours and not self.refreshing:
            return self.started + self.interval / 2
        return self.started + self.interval - min(32.0, self.interval / 3)

    def restart(self, now: float) -> None:
        self.started, self.refreshing = now, False

    def due(self, now: float) -> str | None:
        """``"refresh"`` (send one now), ``"expire"`` (hang up), or None."""
        if now < self.deadline:
            return None
        if self.ours and not self.refreshing:
            self.refreshing = True
            return "refresh"
        return "expire"

    def header(self, we_send_request: bool) -> str:
        """Session-Expires for a request we send (True) or a response we send (False)."""
        role = "uac" if self.ours == we_send_request else "uas"
        return f"{self.interval};refresher={role}"


def negotiate_as_uas(headers: Headers, min_se: int) -> SessionTimer | None:
    """The timer a request (INVITE, re-INVITE, UPDATE) asks of us, its UAS.

    None: no Session-Expires, so no timer. Raises :class:`TooSmall` (422) and ``ValueError``
    (400) for a malformed header.
    """
    value = headers.get("Session-Expires")
    if value is None:
        return None
    interval, refresher = parse_session_expires(value)
    if interval < min_se:
        raise TooSmall(min_se)
    # A requester without timer support cannot refresh (a proxy added the header): we do (§9).
    # Otherwise the requester chose, or it refreshes.
    if not supports(headers, "timer"):
        refresher = "uas"
    refresher = refresher or "uac"
    return SessionTimer(interval, refresher == "uas")


def negotiate_as_uac(headers: Headers) -> SessionTimer | None:
    """The timer the 2xx to our INVITE, re-INVITE or UPDATE grants (None: no Session-Expires,
    so none, §7.2). Raises ``ValueError`` for a malformed header."""
    value = headers.get("Session-Expires")
    if value is None:
        return None
    interval, refresher = parse_session_expires(value)
    return SessionTimer(interval, (refresher or "uac") == "uac")
