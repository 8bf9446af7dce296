"""The SIP front door: a :class:`SipEndpoint` beside HTTP, turning SIP calls into bridge calls.

It mirrors the WebRTC signalling routes: protect, route to a dialplan, answer, then run the
call and its RTP leg until either side ends it. The UserAgent already screens sources (allow
list, rate limit, digest auth, its own call limit); this layer adds what only the bridge knows:
engines loaded, bridge-wide capacity (WebRTC calls count too) and the dialplan routing.

Outbound calls and transfers go only where the configured destination patterns allow, so no
dialplan, API client or caller can make the bridge dial premium numbers (toll fraud).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.config import ConfigError, SipConfig
from bridge.dialog.dialplan import Dialplan, DialplanError
from bridge.media.g711 import codec_by_name
from bridge.sip.agent import AgentConfig
from bridge.sip.auth import DigestVerifier
from bridge.sip.call_host import (
    CallHandle,
    CallHost,
    CallOutcome,
    CallSetupFailed,
    CallSpec,
    LocalCallHost,
)
from bridge.sip.endpoint import SipEndpoint
from bridge.sip.events import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
    DtmfInfo,
    Event,
    IncomingCall,
    MediaUpdated,
    TransferProgress,
)
from bridge.sip.media_workers import EngineFactory, MediaWorkers
from bridge.sip.ports import PortAllocator, PortsExhausted
from bridge.sip.protection import AllowList, DestinationPolicy, RateLimiter
from bridge.sip.register import RegistrationClient, registrations
from bridge.sip.sdp import NegotiatedMedia
from bridge.sip.uri import SipUri

if TYPE_CHECKING:
    from bridge.server import Bridge

log = logging.getLogger(__name__)

BUSY = (486, 600, 603)
NO_ANSWER = (408, 480, 487)
OUTBOUND_KEPT = 1000  # outbound call reports kept for GET /api/calls/{id}
FINAL = ("completed", "busy", "no-answer", "failed")


class DialRefused(Exception):
    """An outbound call the bridge will not place; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class OutboundCall:
    """What ``GET /api/calls/{id}`` reports about a call we placed."""

    id: str
    to: str
    dialplan: str
    status: str = "dialing"  # ringing, answered, completed, busy, no-answer, failed
    sip_status: int | None = None
    reason: str = ""
    record_id: str | None = None  # the bridge call (and its record folder) once answered
    variables: dict[str, str] = field(default_factory=dict)  # given to the dialplan
    collected: dict[str, Any] = field(default_factory=dict)  # what the dialplan set, at the end
    amd: str | None = None  # answering-machine detection result (the dialplan's amd.result)
    duration_s: float | None = None  # answered to hang-up
    answered_at: float | None = field(default=None, repr=False)  # loop time
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def finished(self) -> OutboundCall:
        """Wait (no polling) until the call has a final status: completed, busy, no-answer or
        failed."""
        await self._ended.wait()
        return self

    def end(self, status: str, sip_status: int | None = None, reason: str = "") -> None:
        """Give the call its final status (once: later reports are ignored)."""
        if self.status in FINAL:
            return
        self.status, self.reason = status, reason or self.reason
        if sip_status is not None:
            self.sip_status = sip_status
        self._ended.set()

    def as_dict(self) -> dict[str, object]:
        return {
            "call_id": self.id,
            "to": self.to,
            "dialplan": self.dialplan,
            "status": self.status,
            "sip_status": self.sip_status,
            "reason": self.reason,
            "record_id": self.record_id,
            "variables": self.variables,
            "collected": self.collected,
            "amd": self.amd,
            "duration_s": self.duration_s,
        }


def outcome(status: int) -> str:
    """The API status of an outbound call that failed with SIP ``status``."""
    if status in BUSY:
        return "busy"
    if status in NO_ANSWER:
        return "no-answer"
    return "failed"


def agent_config(sip: SipConfig, environ: dict[str, str] | None = None) -> AgentConfig:
    """The UserAgent settings for ``sip``; passwords are read from the named variables."""
    environ = dict(os.environ) if environ is None else environ
    missing = [var for var in sip.auth.users.values() if var not in environ]
    if missing:
        raise ConfigError(f"sip.auth.users: environment variable {missing[0]} is not set")
    passwords = {user: environ[var] for user, var in sip.auth.users.items()}
    low, high = sip.rtp_port_range
    limit = sip.rate_limit
    return AgentConfig(
        PortAllocator(low, high + 1),
        codecs=[c for c in map(codec_by_name, sip.codecs) if c is not None],
        host=sip.host,
        port=sip.port,
        media_address=sip.media_address,
        user=sip.outbound_from,
        max_calls=sip.max_calls,
        busy_status=503,
        retry_after=sip.retry_after_s,
        allow_list=AllowList(sip.allow_list),
        allow_list_status=sip.refused_status,
        rate_limiter=RateLimiter(limit.per_second, limit.burst),
        rate_limit_status=limit.reply_status,
        verifier=(
            DigestVerifier(sip.auth.realm, passwords, algorithms=tuple(sip.auth.algorithms))
            if passwords
            else None
        ),
        min_se=sip.min_se_s,
        session_expires=sip.session_expires_s,
    )


@dataclass
class _Active:
    """A SIP call and, once it has media, the handle of the bridge call serving it."""

    sip_id: str
    call: CallHandle | None = None
    media: NegotiatedMedia | None = None  # a re-INVITE's, while the call was starting
    outbound: OutboundCall | None = None
    ring_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class SipFront:
    """Runs the SIP endpoint and the calls it brings in or places."""

    def __init__(
        self,
        bridge: Bridge,
        config: SipConfig,
        *,
        ring_timeout_s: float = 60.0,
        make_engines: EngineFactory | None = None,
    ) -> None:
        """``make_engines`` builds the media workers' speech engines (by default each loads
        the configured ones)."""
        self.bridge = bridge
        self.config = config
        self.endpoint = SipEndpoint(agent_config(config), config.host, config.port)
        self.ring_timeout_s = ring_timeout_s
        self.host: CallHost = (
            MediaWorkers(bridge, config.media_workers, make_engines)
            if config.media_workers
            else LocalCallHost(bridge, config)
        )
        self._transfers = DestinationPolicy(config.transfer_targets)
        self._destinations = DestinationPolicy(config.outbound_targets)
        self._active: dict[str, _Active] = {}
        self._outbound: dict[str, OutboundCall] = {}
        self._events: asyncio.Task[None] | None = None
        self._registrations: list[RegistrationClient] = []

    async def start(self) -> int:
        await self.host.start()
        port = await self.endpoint.start(tcp="tcp" in self.config.transports)
        self._events = asyncio.create_task(self._dispatch(), name="sip-events")
        log.info("SIP listening on %s:%d", self.config.host, port)
        trunks = registrations(self.config, self.endpoint.agent.config, os.environ)
        self._registrations = [RegistrationClient(self.endpoint, trunk) for trunk in trunks]
        for client in self._registrations:
            client.start()
        return port

    async def close(self) -> None:
        if self._events is not None:
            self._events.cancel()
        for active in list(self._active.values()):
            self._stop_ringing(active)
            if active.call is not None:
                active.call.hangup("shutdown")
            elif active.outbound is not None:
                active.outbound.end("failed", reason="shutdown")
            self.endpoint.hangup(active.sip_id)
        await asyncio.gather(*(client.stop() for client in self._registrations))
        await self.host.close()
        await self.endpoint.close()

    @property
    def ready(self) -> bool:
        """Calls can be taken: engines loaded, and a media worker up when there are workers."""
        return self.bridge.ready and self.host.ready

    def media_worker_status(self) -> list[dict[str, object]]:
        """The media workers' state (none when calls run in this process)."""
        return self.host.status() if isinstance(self.host, MediaWorkers) else []

    def reload_dialplans(self) -> None:
        """Media workers keep their own dialplan library: pass a reload on."""
        self.host.reload_dialplans()

    def registration_status(self) -> list[dict[str, object]]:
        """Each trunk registration's state and last SIP status, for the status API."""
        now = asyncio.get_running_loop().time()
        return [client.registration.status(now) for client in self._registrations]

    # --- outbound ---------------------------------------------------------------------------

    def dial(
        self,
        to: str,
        *,
        from_user: str | None = None,
        dialplan: str | None = None,
        variables: dict[str, str] | None = None,
        ring_timeout_s: float | None = None,
    ) -> OutboundCall:
        """Place a call that runs ``dialplan`` (with ``variables``) when answered, cancelled
        after ``ring_timeout_s`` (default: the front's) unanswered; raises
        :class:`DialRefused`."""
        if not self._destinations.allows(to):
            raise DialRefused(403, f"destination {to!r} is not allowed by sip.outbound_targets")
        plan = self._dialplan(dialplan or self.bridge.config.dialog.default_dialplan)
        if not self.ready or self.bridge.at_capacity():
            raise DialRefused(503, "not ready or at capacity")
        try:
            sip_id = self.endpoint.call(to, from_user=from_user or self.config.outbound_from)
        except PortsExhausted as exc:
            raise DialRefused(503, str(exc)) from None
        out = OutboundCall(uuid.uuid4().hex[:12], to, plan.name, variables=dict(variables or {}))
        active = _Active(sip_id, outbound=out)
        active.ring_timer = asyncio.get_running_loop().call_later(
            self.ring_timeout_s if ring_timeout_s is None else ring_timeout_s,
            self.endpoint.cancel,
            sip_id,
        )
        self._active[sip_id] = active
        self._outbound[out.id] = out
        if len(self._outbound) > OUTBOUND_KEPT:  # the oldest reports go first
            del self._outbound[next(iter(self._outbound))]
        return out

    def outbound_call(self, call_id: str) -> OutboundCall | None:
        return self._outbound.get(call_id)

    # --- events -----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            event = await self.endpoint.next_event()
            try:
                self._on_event(event)
            except Exception:
                log.exception("SIP event %r failed", event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, IncomingCall):
            self._on_incoming(event)
            return
        active = self._active.get(event.call_id)
        if active is None:
            return
        out = active.outbound
        if isinstance(event, CallProgress) and out is not None and event.status in (180, 183):
            out.status, out.sip_status = "ringing", event.status
        elif isinstance(event, CallAnswered) and out is not None:
            self._stop_ringing(active)
            out.status, out.sip_status = "answered", 200
            out.answered_at = asyncio.get_running_loop().time()
            self._start_call(
                active, event.media, event.local_rtp_port, self._dialplan(out.dialplan)
            )
        elif isinstance(event, CallFailed) and out is not None:
            self._stop_ringing(active)
            out.end(outcome(event.status), event.status, event.reason)
            del self._active[event.call_id]
        elif isinstance(event, CallEnded):
            self._on_ended(active, event.reason)
        elif isinstance(event, MediaUpdated):
            if active.call is None:
                active.media = event.media  # applied once the call has started
            else:
                active.call.update(event.media)
        elif isinstance(event, DtmfInfo) and active.call is not None:
            active.call.dtmf(event.digit)
        elif isinstance(event, TransferProgress) and active.call is not None:
            active.call.transfer_progress(event.status, event.reason, event.final)

    def _on_incoming(self, event: IncomingCall) -> None:
        if not self.ready or self.bridge.at_capacity():
            log.warning("503 for %s: not ready or at capacity", event.call_id)
            event.reject(503)
            return
        try:
            plan = self._route(event)
        except DialplanError as exc:
            log.warning("404 for %s: %s", event.call_id, exc)
            event.reject(404)
            return
        active = _Active(event.call_id)
        self._active[event.call_id] = active
        source = f"{event.source.host}:{event.source.port}"
        start = functools.partial(
            self._start_call, active, event.media, event.local_rtp_port, plan, event.answer, source
        )
        if self.config.answer_delay_ms <= 0:
            start()
            return
        # Ringing (180 is out): a CANCEL now ends it in _on_ended, before any call or record
        # exists, as with a phone nobody picked up.
        active.ring_timer = asyncio.get_running_loop().call_later(
            self.config.answer_delay_ms / 1000, self._answer_ringing, active, start
        )

    def _answer_ringing(self, active: _Active, start: Callable[[], None]) -> None:
        """The ring delay is over: answer, unless the caller cancelled meanwhile."""
        active.ring_timer = None
        if self._active.get(active.sip_id) is active:
            start()

    def _route(self, event: IncomingCall) -> Dialplan:
        """The dialplan for the called user (Request-URI user, else To user): the operator's
        ``sip.routes`` first, then a plan named so or serving it, else the default plan."""
        users = [event.request_uri_user]
        with contextlib.suppress(ValueError):
            users.append(SipUri.parse(event.to_uri).user)
        called = [user for user in users if user]
        for user in called:
            if user in self.config.routes:
                return self._dialplan(self.config.routes[user])
        for user in called:
            with contextlib.suppress(DialplanError):
                return self.bridge.dialplans.find("sip", user)
        return self._dialplan(self.bridge.config.dialog.default_dialplan)

    def _start_call(
        self,
        active: _Active,
        media: NegotiatedMedia,
        rtp_port: int,
        plan: Dialplan,
        answer: Callable[[], None] | None = None,
        remote: str = "",
    ) -> None:
        spec = CallSpec(
            active.sip_id,
            media,
            rtp_port,
            plan.name,
            remote or f"{media.remote_addr}:{media.remote_port}",
            active.outbound.variables if active.outbound is not None else {},
        )
        self.bridge.spawn(self._run(active, spec, answer))

    async def _run(
        self, active: _Active, spec: CallSpec, answer: Callable[[], None] | None
    ) -> None:
        try:
            call = await self.host.start_call(spec, self._on_request)
        except CallSetupFailed as exc:
            log.error("SIP call %s not started: %s", active.sip_id, exc)
            self._active.pop(active.sip_id, None)
            if active.outbound is not None:
                active.outbound.end("failed", reason="setup-failed")
            if answer is not None:
                self.endpoint.reject(active.sip_id, 503)
            else:
                self.endpoint.hangup(active.sip_id)
            return
        if self._active.get(active.sip_id) is not active:  # the caller left while it started
            call.hangup("cancelled")
        else:
            active.call = call
            if active.media is not None:
                call.update(active.media)
            if active.outbound is not None:
                active.outbound.record_id = call.record_id
            if answer is not None:
                answer()
        try:
            outcome = await call.outcome()
        finally:
            self._active.pop(active.sip_id, None)
        if active.outbound is not None:
            self._completed(active.outbound, outcome)

    def _on_ended(self, active: _Active, reason: str) -> None:
        self._stop_ringing(active)
        if active.call is not None:
            active.call.hangup(reason.replace(" ", "-"))
        else:
            log.info("SIP call %s ended before answer: %s", active.sip_id, reason)
            self._active.pop(active.sip_id, None)
            if active.outbound is not None:
                active.outbound.end("failed", reason=reason)

    @staticmethod
    def _completed(out: OutboundCall, outcome: CallOutcome) -> None:
        """An answered outbound call ended: report what its dialplan collected."""
        out.collected = outcome.collected
        amd = out.collected.get("amd")
        out.amd = str(amd["result"]) if isinstance(amd, dict) and "result" in amd else None
        if out.answered_at is not None:
            out.duration_s = round(asyncio.get_running_loop().time() - out.answered_at, 3)
        out.end("completed")

    def _stop_ringing(self, active: _Active) -> None:
        if active.ring_timer is not None:
            active.ring_timer.cancel()
            active.ring_timer = None

    # --- what the call asks of its transport --------------------------------------------------

    def _on_request(self, sip_id: str, message: dict[str, object]) -> None:
        active = self._active.get(sip_id)
        if active is None:
            return
        kind = message.get("type")
        if kind == "hangup":
            self.endpoint.hangup(active.sip_id)
        elif kind == "transfer":
            self._transfer(active, str(message.get("target", "")))

    def _transfer(self, active: _Active, target: str) -> bool:
        """Blind-transfer the caller (REFER) if ``target`` is an allowed destination."""
        call = active.call
        if not self._transfers.allows(target):
            log.warning("transfer to %r refused: not in sip.transfer_targets", target)
            if call is not None:
                call.transfer_refused(target)
            return False
        return self.endpoint.refer(active.sip_id, target)

    def _dialplan(self, name: str) -> Dialplan:
        return self.bridge.dialplans.get(name)
