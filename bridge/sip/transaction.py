"""The four SIP transaction state machines (RFC 3261 §17, with RFC 6026's Accepted state).

Each transaction is sans-I/O: calls take the current time, messages to transmit pile up in
``outbox`` (the owner drains it), and ``deadline`` says when ``on_timer`` must run next.
Retransmissions of requests are absorbed here, so the layers above see each request once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from bridge.sip.headers import Headers
from bridge.sip.message import Message, Request, Response

BRANCH_COOKIE = "z9hG4bK"


class Address(NamedTuple):
    """Where a message came from or goes to; ``transport`` is ``"udp"`` or ``"tcp"``."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 base timers in seconds; tests shrink them to run fast."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class State(Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def server_key(request: Request) -> tuple[str, str, int, str]:
    """Match requests to server transactions (§17.2.3); an ACK matches its INVITE."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    return via.branch or "", *via.sent_by, method


def client_key(message: Message, method: str | None = None) -> tuple[str, str]:
    """Match responses to client transactions (§17.1.3): top Via branch + CSeq method."""
    return message.top_via.branch or "", method or message.cseq[1]


def response_to(request: Request, status: int, reason: str = "", to_tag: str = "") -> Response:
    """A response copying the headers §8.2.6.2 requires; ``to_tag`` is added when absent."""
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    if to_tag and request.headers.get("To") and request.to.tag is None:
        headers.set("To", str(request.to.with_tag(to_tag)))
    return Response(headers=headers, status=status, reason=reason)


class Transaction:
    """Timers, outbox and state shared by all four machines."""

    def __init__(self, request: Request, remote: Address, config: TimerConfig) -> None:
        self.request = request
        self.call_id = request.call_id  # looked up for every call on every sweep: parse once
        self.remote = remote
        self.config = config
        self.reliable = remote.transport != "udp"
        self.outbox: list[Message] = []
        self.state = State.TRYING
        self.timed_out = False
        self._timers: dict[str, float] = {}
        self._intervals: dict[str, float] = {}

    @property
    def deadline(self) -> float | None:
        return min(self._timers.values(), default=None)

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def on_timer(self, now: float) -> None:
        """Fire every timer that is due (in deadline order)."""
        for name, when in sorted(self._timers.items(), key=lambda item: item[1]):
            if when <= now and name in self._timers and not self.terminated:
                del self._timers[name]
                self._fire(name, now)

    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _arm(self, name: str, now: float, interval: float) -> None:
        self._intervals[name] = interval
        self._timers[name] = now + interval

    def _arm_retransmit(self, name: str, now: float, cap: float | None = None) -> None:
        """Re-arm a doubling retransmission timer (A, E, G), capped at T2 unless told."""
        interval = self._intervals[name] * 2
        if cap is not None:
            interval = min(interval, cap)
        self._arm(name, now, interval)

    def _wait(self, name: str, now: float, interval: float) -> None:
        """Arm a linger timer, which is zero on reliable transports (D, I, J, K)."""
        if self.reliable:
            self._terminate()
        else:
            self._arm(name, now, interval)

    def _terminate(self, timed_out: bool = False) -> None:
        self.state = State.TERMINATED
        self.timed_out = timed_out
        self._timers.clear()


class ServerInviteTransaction(Transaction):
    """§17.2.1: sends 100 at once, repeats the final response until it is ACKed."""

    def __init__(self, request: Request, remote: Address, config: TimerConfig, now: float):
        super().__init__(request, remote, config)
        self.state = State.PROCEEDING
        self.last_response: Response = response_to(request, 100)
        self.outbox.append(self.last_response)

    def respond(self, response: Response, now: float) -> None:
        if self.state is not State.PROCEEDING:
            return
        self.last_response = response
        self.outbox.append(response)
        if response.status < 200:
            return
        # 2xx is retransmitted whatever the transport (§13.3.1.4); others only on UDP.
        self.state = State.ACCEPTED if response.status < 300 else State.COMPLETED
        if self.state is State.ACCEPTED or not self.reliable:
            self._arm("G", now, self.config.t1)
        self._arm("H", now, 64 * self.config.t1)

    def receive_request(self, request: Request, now: float) -> None:
        """A retransmitted INVITE gets the last response again; an ACK confirms."""
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._timers.clear()
                self._wait("I", now, self.config.t4)
        elif self.state in (State.PROCEEDING, State.COMPLETED, State.ACCEPTED):
            self.outbox.append(self.last_response)

    def ack_received(self) -> None:
        """The TU matched the 2xx's ACK (a separate transaction) to this INVITE."""
        if self.state is State.ACCEPTED:
            self._terminate()

    def _fire(self, name: str, now: float) -> None:
        if name == "G":
            self.outbox.append(self.last_response)
            self._arm_retransmit("G", now, self.config.t2)
        elif name == "H":
            self._terminate(timed_out=True)
        else:  # I
            self._terminate()


class ServerTransaction(Transaction):
    """§17.2.2 non-INVITE server: absorbs retransmissions, lingers for timer J."""

    def __init__(self, request: Request, remote: Address, config: TimerConfig, now: float):
        super().__init__(request, remote, config)
        self.last_response: Response | None = None

    def respond(self, response: Response, now: float) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        self.last_response = response
        self.outbox.append(response)
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._wait("J", now, 64 * self.config.t1)

    def receive_request(self, request: Request, now: float) -> None:
        if self.last_response is not None:
            self.outbox.append(self.last_response)

    def _fire(self, name: str, now: float) -> None:
        self._terminate()


class ClientInviteTransaction(Transaction):
    """§17.1.1 with RFC 6026: ACKs non-2xx itself, passes every 2xx up for the TU to ACK."""

    def __init__(self, request: Request, remote: Address, config: TimerConfig, now: float):
        super().__init__(request, remote, config)
        self.state = State.CALLING
        self.outbox.append(request)
        if not self.reliable:
            self._arm("A", now, config.t1)
        self._arm("B", now, 64 * config.t1)

    def receive_response(self, response: Response, now: float) -> Response | None:
        """Returns the response when the TU must see it (None: absorbed)."""
        if self.state in (State.CALLING, State.PROCEEDING):
            if response.status < 200:
                self.state = State.PROCEEDING
                self._timers.pop("A", None)
            elif response.status < 300:
                self.state = State.ACCEPTED
                self._timers.clear()
                self._arm("M", now, 64 * self.config.t1)
            else:
                self.state = State.COMPLETED
                self._timers.clear()
                self.outbox.append(self._ack(response))
                self._wait("D", now, 32.0)
            return response
        if self.state is State.COMPLETED and response.status >= 300:
            self.outbox.append(self._ack(response))
        elif self.state is State.ACCEPTED and 200 <= response.status < 300:
            return response
        return None

    def _ack(self, response: Response) -> Request:
        """§17.1.1.3: the ACK for a non-2xx final response reuses the INVITE's branch."""
        headers = Headers()
        headers.add("Via", self.request.headers.get("Via") or "")
        for name in ("Max-Forwards", "From", "Call-ID", "Route"):
            for value in self.request.headers.get_all(name):
                headers.add(name, value)
        headers.add("To", response.headers.get("To") or "")
        headers.add("CSeq", f"{self.request.cseq[0]} ACK")
        return Request(headers=headers, method="ACK", uri=self.request.uri)

    def _fire(self, name: str, now: float) -> None:
        if name == "A":
            self.outbox.append(self.request)
            self._arm_retransmit("A", now)
        elif name == "B":
            self._terminate(timed_out=True)
        else:  # D, M
            self._terminate()


class ClientTransaction(Transaction):
    """§17.1.2 non-INVITE client: E retransmits, F times out, K lingers."""

    def __init__(self, request: Request, remote: Address, config: TimerConfig, now: float):
        super().__init__(request, remote, config)
        self.outbox.append(request)
        if not self.reliable:
            self._arm("E", now, config.t1)
        self._arm("F", now, 64 * config.t1)

    def receive_response(self, response: Response, now: float) -> Response | None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return None
        if response.status < 200:
            self.state = State.PROCEEDING
            return response
        self.state = State.COMPLETED
        self._timers.clear()
        self._wait("K", now, self.config.t4)
        return response

    def _fire(self, name: str, now: float) -> None:
        if name == "E":
            self.outbox.append(self.request)
            if self.state is State.PROCEEDING:
                self._arm("E", now, self.config.t2)
            else:
                self._arm_retransmit("E", now, self.config.t2)
        elif name == "F":
            self._terminate(timed_out=True)
        else:  # K
            self._terminate()


ServerSide = ServerInviteTransaction | ServerTransaction
ClientSide = ClientInviteTransaction | ClientTransaction
