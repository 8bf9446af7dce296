"""Trunk registration (RFC 3261 §10): keep our Contact bound at a provider's registrar, so the
provider sends calls for our address-of-record to the bridge.

:class:`Registration` is sans-I/O: it is told the time and each REGISTER's final response (None
when the transaction timed out), returns the REGISTERs to send, and says in ``deadline`` when
:meth:`Registration.on_timer` must run (the refresh, or the retry after a failure). The
transaction layer under :class:`SipEndpoint` retransmits; :class:`RegistrationClient` is the thin
asyncio driver. Only one REGISTER is in flight at a time (§10.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Callable, Mapping
from enum import Enum

from bridge.config import ConfigError, SipConfig, SipRegistrationConfig
from bridge.sip.agent import AgentConfig
from bridge.sip.auth import authorize, parse_auth_header
from bridge.sip.endpoint import SipEndpoint
from bridge.sip.headers import Headers, get_param
from bridge.sip.message import REASONS, Request, Response
from bridge.sip.transaction import Address
from bridge.sip.uri import NameAddress, SipUri

REFRESH_MARGIN_S = 30.0  # refresh this long before the binding lapses (at most half-way)
BACKOFF_MIN_S = 5.0  # first retry after a failure, doubling per failure...
BACKOFF_MAX_S = 300.0  # ...up to this
JITTER = 0.2  # retries come up to 20 % early, so bridges restarted together spread out
MAX_CHALLENGES = 3  # nonces answered per attempt: a first challenge, then stale ones
ALGORITHMS = ("SHA-256", "MD5")  # the strongest offered is answered (RFC 8760 §2.4)
_CHALLENGE = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


class RegistrationState(Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"  # the first attempt, not answered yet
    REGISTERED = "registered"
    FAILED = "failed"  # the last attempt failed; a retry is scheduled
    UNREGISTERING = "unregistering"


class Registration:
    """One address-of-record bound at one registrar, refreshed and retried on its own."""

    def __init__(
        self,
        config: SipRegistrationConfig,
        password: str | None,
        contact: SipUri,
        *,
        user_agent: str = "voice-bridge",
        jitter: Callable[[], float] = random.random,
    ) -> None:
        registrar = SipUri.parse(config.registrar)
        self.config = config
        self.uri = str(SipUri(registrar.host, port=registrar.port, scheme=registrar.scheme))
        self.remote = Address(config.transport, registrar.host.strip("[]"), registrar.port or 5060)
        self.aor = SipUri(config.domain or registrar.host, config.user)
        self.contact = contact
        self.state = RegistrationState.UNREGISTERED
        self.sip_status: int | None = None  # of the last final response (408: timed out)
        self.reason = ""
        self.expires = config.expires  # what we ask for; 423 Min-Expires raises it
        self.bound_until: float | None = None  # when our binding lapses, while we have one
        self.deadline: float | None = None  # when on_timer must run next
        self._password = password
        self._user_agent = user_agent
        self._jitter = jitter
        self._call_id = f"{secrets.token_hex(12)}@{contact.host}"  # one per registration
        self._tag = secrets.token_hex(6)
        self._cseq = 0
        self._pending: Request | None = None
        self._credentials: dict[str, str] = {}  # Authorization / Proxy-Authorization values
        self._answered: set[str] = set()  # nonces answered in the current attempt
        self._failures = 0
        self._stopping = False

    @property
    def stopped(self) -> bool:
        """Stopped and nothing left to send: the binding is removed, or never existed."""
        return self._stopping and self._pending is None

    def start(self, now: float) -> list[Request]:
        self.state = RegistrationState.REGISTERING
        return [self._attempt(self.expires)]

    def stop(self, now: float) -> list[Request]:
        """Remove our binding (Expires: 0) if we may hold one, once no REGISTER is pending."""
        self._stopping, self.deadline = True, None
        if self._pending is not None:
            return []
        if self.bound_until is None or self.bound_until <= now:
            self.state = RegistrationState.UNREGISTERED
            return []
        self.state = RegistrationState.UNREGISTERING
        return [self._attempt(0)]

    def on_timer(self, now: float) -> list[Request]:
        """Refresh before the binding lapses, or retry after a failure."""
        if self.deadline is None or now < self.deadline or self._pending is not None:
            return []
        return [self._attempt(self.expires)]

    def on_response(self, response: Response | None, now: float) -> list[Request]:
        """The pending REGISTER's final response; None when it timed out."""
        request, self._pending = self._pending, None
        if request is None:
            return []
        if response is None:
            self.sip_status, self.reason = 408, "Request Timeout"
        else:
            self.sip_status = response.status
            self.reason = response.reason or REASONS.get(response.status, "")
        removing = _seconds(request.headers.get("Expires")) == 0
        if response is not None and (removing or not self._stopping):
            again = self._follow_up(request, response)
            if again is not None:
                return [again]
        if removing:  # tried once: we are going away anyway
            self.bound_until, self.state = None, RegistrationState.UNREGISTERED
            return []
        if response is not None and 200 <= response.status < 300:
            self._registered(response, now)
        else:
            self._failed(now)
        return self.stop(now) if self._stopping else []

    def status(self, now: float) -> dict[str, object]:
        """What ``GET /api/sip/registrations`` shows, times in seconds from now."""
        return {
            "aor": str(self.aor),
            "registrar": self.config.registrar,
            "state": self.state.value,
            "sip_status": self.sip_status,
            "reason": self.reason,
            "expires_in": _until(self.bound_until, now),
            "next_attempt_in": _until(self.deadline, now),
        }

    def _follow_up(self, request: Request, response: Response) -> Request | None:
        """The REGISTER again when the registrar asks for what we can give: credentials
        (401/407) or a longer interval than we asked for (423 with Min-Expires)."""
        expires = _seconds(request.headers.get("Expires")) or 0
        if response.status in _CHALLENGE:
            challenge_header, header = _CHALLENGE[response.status]
            answer = self._answer(request, response.headers.get_all(challenge_header), header)
            if answer is None:
                return None
            self._credentials[header] = answer
            return self._send(expires)
        minimum = _seconds(response.headers.get("Min-Expires"))
        if response.status == 423 and minimum is not None and 0 < expires < minimum:
            self.expires = minimum
            return self._send(minimum)
        return None

    def _answer(self, request: Request, challenges: list[str], header: str) -> str | None:
        """Credentials for the strongest challenge we can answer. Each nonce is answered once:
        a new challenge after our answer means a wrong password, unless it says stale=true."""
        if self._password is None:
            return None
        parsed = [(c, parse_auth_header(c)[1]) for c in challenges]
        parsed.sort(key=lambda item: _strength(item[1].get("algorithm", "MD5")))
        for challenge, params in parsed:
            nonce, stale = params.get("nonce", ""), params.get("stale", "").lower() == "true"
            refused = header in request.headers and not stale
            if refused or nonce in self._answered or len(self._answered) >= MAX_CHALLENGES:
                return None
            try:
                answer = authorize(
                    challenge,
                    method="REGISTER",
                    uri=request.uri,
                    username=self.config.auth_username or self.config.user,
                    password=self._password,
                )
            except ValueError:
                continue
            self._answered.add(nonce)
            return answer
        return None

    def _registered(self, response: Response, now: float) -> None:
        granted = self._granted(response)
        if granted <= 0:
            self._failed(now)
            return
        self.state, self._failures = RegistrationState.REGISTERED, 0
        self.bound_until = now + granted
        self.deadline = now + granted - min(REFRESH_MARGIN_S, granted / 2)

    def _granted(self, response: Response) -> int:
        """Seconds the registrar keeps our binding: our Contact's expires parameter, else the
        Expires header, else what we asked for (§10.2.4)."""
        for value in response.headers.get_all("Contact"):
            with contextlib.suppress(ValueError):
                contact = NameAddress.parse(value)
                seconds = _seconds(get_param(contact.params, "expires"))
                if _same_binding(contact.uri, self.contact) and seconds is not None:
                    return seconds
        header = _seconds(response.headers.get("Expires"))
        return self.expires if header is None else header

    def _failed(self, now: float) -> None:
        self._failures += 1
        self.state = RegistrationState.FAILED  # bound_until stays: a binding may outlive it
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(self._failures - 1, 16))
        self.deadline = now + delay * (1 - JITTER * self._jitter())

    def _attempt(self, expires: int) -> Request:
        """A new REGISTER transaction with fresh credentials (challenged afresh)."""
        self._credentials.clear()
        self._answered.clear()
        return self._send(expires)

    def _send(self, expires: int) -> Request:
        self._cseq += 1
        self.deadline = None
        headers = Headers()
        headers.add("Max-Forwards", "70")
        headers.add("From", str(NameAddress(self.aor).with_tag(self._tag)))
        headers.add("To", str(NameAddress(self.aor)))
        headers.add("Call-ID", self._call_id)
        headers.add("CSeq", f"{self._cseq} REGISTER")
        headers.add("Contact", str(NameAddress(self.contact)))
        headers.add("Expires", str(expires))
        headers.add("User-Agent", self._user_agent)
        for name, value in self._credentials.items():
            headers.add(name, value)
        self._pending = Request(headers=headers, method="REGISTER", uri=self.uri)
        return self._pending


class RegistrationClient:
    """Drives a :class:`Registration` over a running :class:`SipEndpoint` on the loop clock."""

    def __init__(self, endpoint: SipEndpoint, registration: Registration) -> None:
        self.endpoint = endpoint
        self.registration = registration
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()

    def start(self) -> None:
        self._send(self.registration.start(_now()))

    async def stop(self, timeout: float = 5.0) -> None:
        """Unregister, waiting at most ``timeout`` seconds for the registrar: shutdown must
        not hang on an unreachable one."""
        self._send(self.registration.stop(_now()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout)
        if self._timer is not None:
            self._timer.cancel()

    def _send(self, requests: list[Request]) -> None:
        for request in requests:
            future = self.endpoint.request(request, self.registration.remote)
            future.add_done_callback(self._on_answer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if (deadline := self.registration.deadline) is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)
        if self.registration.stopped:
            self._stopped.set()

    def _on_answer(self, future: asyncio.Future[Response | None]) -> None:
        if not future.cancelled():
            self._send(self.registration.on_response(future.result(), _now()))

    def _on_timer(self) -> None:
        self._timer = None
        self._send(self.registration.on_timer(_now()))


def registrations(
    sip: SipConfig, agent: AgentConfig, environ: Mapping[str, str]
) -> list[Registration]:
    """The configured trunk registrations, contacting us at the agent's host and bound port;
    passwords are read from the named environment variables."""
    found: list[Registration] = []
    for config in sip.registrations:
        if config.password_env is not None and config.password_env not in environ:
            raise ConfigError(
                f"sip.registrations: environment variable {config.password_env} is not set"
            )
        password = environ[config.password_env] if config.password_env else None
        params = (("transport", "tcp"),) if config.transport == "tcp" else ()
        contact = SipUri(agent.host, config.user, agent.port, params=params)
        found.append(Registration(config, password, contact, user_agent=agent.user_agent))
    return found


def _strength(algorithm: str) -> int:
    upper = algorithm.upper()
    return ALGORITHMS.index(upper) if upper in ALGORITHMS else len(ALGORITHMS)


def _same_binding(uri: SipUri, contact: SipUri) -> bool:
    def key(u: SipUri) -> tuple[str | None, str, int]:
        return u.user, u.host, u.port or 5060

    return key(uri) == key(contact)


def _seconds(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else None


def _until(when: float | None, now: float) -> float | None:
    return None if when is None else round(max(0.0, when - now), 1)


def _now() -> float:
    return asyncio.get_running_loop().time()
