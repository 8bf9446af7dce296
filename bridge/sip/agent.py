"""The SIP user agent core: UAS and UAC call logic on top of the transaction layer, sans-I/O.

Feed it datagrams/stream messages with :meth:`UserAgent.receive` and the clock with
:meth:`UserAgent.on_timer`; collect what to transmit with :meth:`UserAgent.data_to_send` and
what happened with :meth:`UserAgent.events`. Application decisions (answer, reject, call,
hang up) are methods too. Nothing here touches sockets or reads the clock.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.media.g711 import PCMA, PCMU
from bridge.sip.auth import AuthResult, DigestVerifier, authorize
from bridge.sip.dialog import Dialog
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
from bridge.sip.headers import Headers
from bridge.sip.message import (
    MAX_MESSAGE_SIZE,
    Message,
    Request,
    Response,
    SipParseError,
    parse_message,
)
from bridge.sip.multipart import MULTIPART, UNDERSTOOD, MultipartError, parse_parts
from bridge.sip.ports import PortAllocator, PortsExhausted
from bridge.sip.protection import AllowList, RateLimiter
from bridge.sip.sdp import LocalMedia, NegotiatedMedia, RtpCodec, SdpError, SessionDescription
from bridge.sip.session_timer import (
    DEFAULT_MIN_SE,
    SessionTimer,
    TooSmall,
    negotiate_as_uac,
    negotiate_as_uas,
    supports,
)
from bridge.sip.transaction import (
    Address,
    ClientInviteTransaction,
    ClientTransaction,
    ServerInviteTransaction,
    ServerTransaction,
    State,
    TimerConfig,
    Transaction,
    client_key,
    new_branch,
    response_to,
    server_key,
)
from bridge.sip.uri import NameAddress, SipUri

log = logging.getLogger(__name__)

ALLOWED = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "NOTIFY", "UPDATE")
# Methods we recognise but do not serve get 405; anything else 501 (§8.2.1).
KNOWN = (*ALLOWED, "REGISTER", "PRACK", "SUBSCRIBE", "MESSAGE", "REFER")
# Option tags a request may Require of us (others get 420, RFC 3261 §8.2.2.3).
SUPPORTED = ("timer",)
ACCEPT = ", ".join((*UNDERSTOOD, "multipart/mixed"))
DTMF_DIGITS = "0123456789*#ABCD"
_RELAY_SIGNAL = re.compile(r"^\s*Signal\s*=\s*(\S+)", re.IGNORECASE | re.MULTILINE)
_RELAY_DURATION = re.compile(r"^\s*Duration\s*=\s*(\d{1,6})", re.IGNORECASE | re.MULTILINE)
_SIPFRAG_STATUS = re.compile(r"^SIP/2\.0\s+(\d{3})\s*([^\r\n]*)")


@dataclass
class AgentConfig:
    """Everything a deployment tunes. ``host``/``port`` are what we advertise in Via/Contact."""

    rtp_ports: PortAllocator
    codecs: Sequence[RtpCodec] = (PCMU, PCMA)  # in order of preference
    host: str = "127.0.0.1"
    port: int = 5060
    media_address: str | None = None  # SDP c= address; defaults to host
    user: str = "bridge"
    timers: TimerConfig = field(default_factory=TimerConfig)
    ptime: int = 20
    max_calls: int = 100
    busy_status: int = 486  # or 503, sent with Retry-After
    retry_after: int = 30
    allow_list: AllowList = field(default_factory=AllowList)
    allow_list_status: int | None = None  # None: drop silently; else refuse with this (403)
    rate_limiter: RateLimiter | None = None
    rate_limit_status: int | None = None  # None: drop silently (best against scanners)
    verifier: DigestVerifier | None = None
    max_message_size: int = MAX_MESSAGE_SIZE
    user_agent: str = "voice-bridge"
    min_se: int = DEFAULT_MIN_SE  # shortest session timer interval we accept (else 422)
    # The session timer our INVITEs ask for, and that we ask of callers able but not asking.
    session_expires: int = 1800


@dataclass
class Call:
    call_id: str
    outbound: bool
    remote: Address
    local: LocalMedia
    invite: Request
    tx: ServerInviteTransaction | ClientInviteTransaction
    local_tag: str
    state: str = "offering"  # offering → answered → ended
    dialog: Dialog | None = None
    media: NegotiatedMedia | None = None
    sdp: SessionDescription | None = None  # what our 200 carries: the answer, or our offer
    offer_cseq: int | None = None  # the INVITE whose 200 made an offer: its ACK has the answer
    ack: Request | None = None
    cancel_pending: bool = False
    credentials: tuple[str, str] | None = None
    timer: SessionTimer | None = None
    peer_updates: bool = False  # the peer's Allow lists UPDATE: we refresh with it
    refresh: ClientInviteTransaction | None = None  # our refreshing re-INVITE, if we sent one
    refresh_ack: Request | None = None


class UserAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.calls: dict[str, Call] = {}
        self._server: dict[tuple[str, str, int, str], ServerInviteTransaction | ServerTransaction]
        self._server = {}
        self._client: dict[tuple[str, str], ClientInviteTransaction | ClientTransaction] = {}
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []
        # Requests the application sent itself (REGISTER): their outcomes go back to it.
        self._requested: set[tuple[str, str]] = set()
        self._outcomes: list[tuple[Request, Response | None]] = []

    # -- I/O boundary -------------------------------------------------------------------

    def data_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outgoing = self._outgoing, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def outcomes(self) -> list[tuple[Request, Response | None]]:
        """Final responses to :meth:`send_request` requests (None: the request timed out)."""
        out, self._outcomes = self._outcomes, []
        return out

    @property
    def deadline(self) -> float | None:
        transactions = [*self._server.values(), *self._client.values()]
        deadlines = [t.deadline for t in transactions if t.deadline is not None]
        deadlines += [timer.deadline for timer in self._session_timers()]
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        for tx in [*self._server.values(), *self._client.values()]:
            if tx.deadline is not None and tx.deadline <= now:
                tx.on_timer(now)
        for call in [c for c in self.calls.values() if c.state == "answered" and c.timer]:
            self._on_session_timer(call, now)
        self._sweep(now)

    def receive(self, data: bytes, source: Address, now: float) -> None:
        allowed = self.config.allow_list.allows(source.host)
        if not allowed and self.config.allow_list_status is None:
            log.info("dropped message from %s: not in the allow-list", source.host)
            return
        framed = source.transport != "udp"
        try:
            message = parse_message(data, max_size=self.config.max_message_size, framed=framed)
        except SipParseError as exc:
            log.info("bad SIP message from %s: %s", source, exc.reason)
            if allowed and exc.status is not None and exc.request is not None:
                reason = exc.reason if exc.status == 400 else ""
                reply = response_to(exc.request, exc.status, _printable(reason), _new_tag())
                self._transmit(reply, source)
            return
        if not allowed:
            self._refuse(message, source)
            return
        if isinstance(message, Response):
            self._on_response(message, now)
        else:
            self._on_request(message, source, now)
        self._sweep(now)

    # -- application decisions ----------------------------------------------------------

    def answer(self, call_id: str, now: float) -> None:
        """Send 200 OK with the SDP prepared when the INVITE arrived (our answer, or our offer
        when the INVITE had none)."""
        call = self.calls.get(call_id)
        if call is None or call.outbound or call.state != "offering":
            return
        assert isinstance(call.tx, ServerInviteTransaction) and call.sdp is not None
        call.state = "answered"
        ok = self._response(call.invite, 200, call.local_tag)
        _set_sdp(ok, call.sdp)
        self._grant_timer(call, call.invite, ok, call.timer, now)
        call.tx.respond(ok, now)
        self._sweep(now)

    def reject(self, call_id: str, status: int, now: float) -> None:
        call = self.calls.get(call_id)
        if call is None or call.outbound or call.state != "offering":
            return
        assert isinstance(call.tx, ServerInviteTransaction)
        reply = self._response(call.invite, status, call.local_tag)
        if status == 503:
            reply.headers.add("Retry-After", str(self.config.retry_after))
        call.tx.respond(reply, now)
        self._end(call, CallEnded(call_id, f"rejected {status}"))
        self._sweep(now)

    def call(
        self,
        target: str,
        now: float,
        *,
        from_user: str | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> str:
        """Place a call to ``target`` (a SIP URI; ``;transport=tcp`` selects TCP)."""
        uri = SipUri.parse(target)
        remote = Address(uri.transport, uri.host.strip("[]"), uri.port or 5060)
        port = self.config.rtp_ports.allocate()
        local = self._local_media(port)
        call_id = f"{secrets.token_hex(12)}@{self.config.host}"
        tag = _new_tag()
        headers = Headers()
        headers.add("Via", self._via(remote.transport))
        headers.add("Max-Forwards", "70")
        me = SipUri(self.config.host, from_user or self.config.user, self.config.port)
        headers.add("From", str(NameAddress(me).with_tag(tag)))
        headers.add("To", str(NameAddress(uri)))
        headers.add("Call-ID", call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self._contact(remote.transport))
        headers.add("User-Agent", self.config.user_agent)
        headers.add("Allow", ", ".join(ALLOWED))
        headers.add("Supported", ", ".join(SUPPORTED))
        headers.add("Session-Expires", str(self.config.session_expires))
        headers.add("Min-SE", str(self.config.min_se))
        invite = Request(headers=headers, method="INVITE", uri=str(uri))
        _set_sdp(invite, local.offer())
        tx = ClientInviteTransaction(invite, remote, self.config.timers, now)
        self._client[client_key(invite)] = tx
        call = Call(call_id, True, remote, local, invite, tx, tag, credentials=credentials)
        self.calls[call_id] = call
        self._sweep(now)
        return call_id

    def cancel(self, call_id: str, now: float) -> None:
        """Cancel our unanswered call; waits for a provisional response first (§9.1)."""
        call = self.calls.get(call_id)
        if call is None or not call.outbound or call.state != "offering":
            return
        if call.tx.state is State.PROCEEDING:
            self._send_cancel(call, now)
        else:
            call.cancel_pending = True
        self._sweep(now)

    def hangup(self, call_id: str, now: float) -> None:
        """End a call whatever its state: BYE, CANCEL, or 480 for one still ringing here."""
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            return
        if call.state == "offering":
            if call.outbound:
                self.cancel(call_id, now)
            else:
                self.reject(call_id, 480, now)
            return
        self._send_bye(call, now)
        self._end(call, CallEnded(call_id, "local hangup"))
        self._sweep(now)

    def refer(self, call_id: str, target: str, now: float) -> bool:
        """Blind transfer (RFC 3515): ask the peer of an answered call to call ``target``.

        Progress arrives as :class:`TransferProgress` events (the REFER's response, then the
        NOTIFYs of the implicit subscription). Returns False when the call cannot transfer.
        """
        call = self.calls.get(call_id)
        if call is None or call.state != "answered" or call.dialog is None:
            return False
        transport = call.remote.transport
        refer = call.dialog.request("REFER", self._via(transport), self._contact(transport))
        refer.headers.add("Refer-To", f"<{SipUri.parse(target)}>")
        refer.headers.add("Referred-By", str(call.dialog.local.uri))
        self._start_client(refer, call.remote, now)
        self._sweep(now)
        return True

    def send_request(self, request: Request, remote: Address, now: float) -> None:
        """Send an out-of-dialog non-INVITE request the application built (REGISTER) in a
        client transaction, adding our Via; its outcome comes out of :meth:`outcomes`."""
        others = [(name, value) for name, value in request.headers if name != "Via"]
        request.headers = Headers([("Via", self._via(remote.transport)), *others])
        self._start_client(request, remote, now)
        self._requested.add(client_key(request))
        self._sweep(now)

    # -- requests -----------------------------------------------------------------------

    def _on_request(self, request: Request, source: Address, now: float) -> None:
        if request.method == "ACK":
            self._on_ack(request, now)
            return
        key = server_key(request)
        if existing := self._server.get(key):
            existing.receive_request(request, now)  # a retransmission: absorbed
            return
        if request.to.tag is None and not self._admit(request, source, now):
            return
        tx: ServerInviteTransaction | ServerTransaction
        if request.method == "INVITE":
            tx = ServerInviteTransaction(request, source, self.config.timers, now)
        else:
            tx = ServerTransaction(request, source, self.config.timers, now)
        self._server[key] = tx
        status = self._precheck(request)
        if status:
            reply = self._response(request, status)
            if status in (405, 501):
                reply.headers.add("Allow", ", ".join(ALLOWED))
            if status == 420:
                reply.headers.add("Unsupported", ", ".join(_unsupported(request)))
            tx.respond(reply, now)
        elif request.method == "CANCEL":
            self._on_cancel(request, tx, now)
        elif request.method == "OPTIONS":
            reply = self._response(request, 200)
            reply.headers.add("Accept", ACCEPT)
            tx.respond(reply, now)
        elif request.to.tag is None:
            self._on_new_invite(request, tx, source, now)
        else:
            self._on_in_dialog(request, tx, now)

    def _admit(self, request: Request, source: Address, now: float) -> bool:
        """Rate limit requests from outside any dialog; reply or drop when over the limit."""
        limiter = self.config.rate_limiter
        if limiter is None or limiter.allow(source.host, now):
            return True
        log.warning("rate limit: %s %s from %s", request.method, request.call_id, source.host)
        if self.config.rate_limit_status:
            self._transmit(self._response(request, self.config.rate_limit_status), source)
        return False

    def _precheck(self, request: Request) -> int | None:
        if request.method not in KNOWN:
            return 501
        if request.method not in ALLOWED:
            return 405
        if request.max_forwards == 0:
            return 483
        if request.method not in ("ACK", "CANCEL") and _unsupported(request):
            return 420
        return None

    def _on_new_invite(
        self,
        request: Request,
        tx: ServerInviteTransaction | ServerTransaction,
        source: Address,
        now: float,
    ) -> None:
        if not isinstance(tx, ServerInviteTransaction):  # BYE, INFO... without a dialog
            tx.respond(self._response(request, 481), now)
            return
        if request.call_id in self.calls:
            tx.respond(self._response(request, 482), now)  # a loop or a forked copy
            return
        if (verifier := self.config.verifier) and not self._authorised(request, tx, verifier, now):
            return
        if sum(c.state != "ended" for c in self.calls.values()) >= self.config.max_calls:
            busy = self._response(request, self.config.busy_status)
            if self.config.busy_status == 503:
                busy.headers.add("Retry-After", str(self.config.retry_after))
            tx.respond(busy, now)
            return
        try:
            timer = negotiate_as_uas(request.headers, self.config.min_se)
            offer = _sdp_body(request)
        except (_BodyError, TooSmall, ValueError) as exc:
            log.info("refused INVITE %s: %s", request.call_id, exc)
            tx.respond(self._refusal(request, exc), now)
            return
        if timer is None and supports(request.headers, "timer"):  # able, but asked none (§9)
            timer = SessionTimer(max(self.config.session_expires, _min_se(request)), False)
        try:
            port = self.config.rtp_ports.allocate()
        except PortsExhausted:
            tx.respond(self._response(request, 503), now)
            return
        local = self._local_media(port)
        try:
            if offer is None:  # a late offer (RFC 3261 §13.2.1): ours goes in the 200
                media, sdp = local.provisional(), local.offer()
            else:
                sdp, media = local.answer(offer)
        except SdpError as exc:
            log.info("488 for %s: %s", request.call_id, exc)
            self.config.rtp_ports.release(port)
            tx.respond(self._response(request, 488), now)
            return
        tag = _new_tag()
        call = Call(request.call_id, False, source, local, request, tx, tag, media=media)
        call.sdp, call.dialog, call.timer = sdp, Dialog.as_uas(request, tag), timer
        call.peer_updates = _allows_update(request)
        call.offer_cseq = request.cseq[0] if offer is None else None
        self.calls[call.call_id] = call
        tx.respond(self._response(request, 180, tag), now)
        self._events.append(
            IncomingCall(
                call.call_id,
                str(request.from_.uri),
                str(request.to.uri),
                request.request_uri.user,
                offer,
                sdp,
                media,
                port,
                source,
            )
        )

    def _authorised(
        self, request: Request, tx: ServerInviteTransaction, verifier: DigestVerifier, now: float
    ) -> bool:
        result = verifier.check("INVITE", request.headers.get("Authorization"), now)
        if result is AuthResult.OK:
            return True
        challenge = self._response(request, 401)
        for value in verifier.challenges(now, stale=result is AuthResult.STALE):
            challenge.headers.add("WWW-Authenticate", value)
        tx.respond(challenge, now)
        return False

    def _on_in_dialog(
        self, request: Request, tx: ServerInviteTransaction | ServerTransaction, now: float
    ) -> None:
        call = self.calls.get(request.call_id)
        dialog = call.dialog if call else None
        if call is None or dialog is None or call.state == "ended" or not dialog.matches(request):
            tx.respond(self._response(request, 481), now)
            return
        if not dialog.accept_cseq(request):
            tx.respond(self._response(request, 500), now)
            return
        if request.method == "BYE":
            tx.respond(self._response(request, 200), now)
            self._end(call, CallEnded(call.call_id, "remote hangup"))
        elif request.method == "INFO":
            self._on_info(call, request, tx, now)
        elif request.method == "NOTIFY":
            self._on_notify(call, request, tx, now)
        else:
            self._on_offer(call, request, tx, now)

    def _on_offer(
        self,
        call: Call,
        request: Request,
        tx: ServerInviteTransaction | ServerTransaction,
        now: float,
    ) -> None:
        """A re-INVITE or UPDATE (RFC 3311): a new offer, or none (a session refresh; a
        re-INVITE then gets our offer). Either may renegotiate the session timer (RFC 4028)."""
        try:
            offer = _sdp_body(request)
            timer = negotiate_as_uas(request.headers, self.config.min_se)
        except (_BodyError, TooSmall, ValueError) as exc:
            log.info("refused %s in %s: %s", request.method, call.call_id, exc)
            tx.respond(self._refusal(request, exc), now)
            return
        if offer is not None or request.method == "INVITE":
            # Glare (RFC 3264 §4, RFC 3311 §5.2): our offer (in a 200 or our refreshing
            # re-INVITE) is unanswered (491), or the peer's INVITE still waits for our final
            # response (500, retry shortly).
            refreshing = call.refresh and call.refresh.state in (State.CALLING, State.PROCEEDING)
            if call.offer_cseq is not None or refreshing:
                tx.respond(self._response(request, 491), now)
                return
            if self._invite_pending(call, tx):
                busy = self._response(request, 500)
                busy.headers.add("Retry-After", str(secrets.randbelow(11)))
                tx.respond(busy, now)
                return
        ok = self._response(request, 200)
        if offer is not None:
            try:
                answer, media = call.local.answer(offer)
            except SdpError:
                tx.respond(self._response(request, 488), now)
                return
            call.media = media
            _set_sdp(ok, answer)
            self._events.append(MediaUpdated(call.call_id, media))
        elif request.method == "INVITE":  # a late offer: a full offer, answered in the ACK
            _set_sdp(ok, call.local.offer())
            call.offer_cseq = request.cseq[0]
        if timer is None and call.timer is not None and supports(request.headers, "timer"):
            timer = SessionTimer(call.timer.interval, False)  # keep it; the requester refreshes
        if call.state == "answered":
            self._grant_timer(call, request, ok, timer, now)
        tx.respond(ok, now)

    def _invite_pending(self, call: Call, tx: Transaction) -> bool:
        return any(
            isinstance(t, ServerInviteTransaction)
            and t is not tx
            and t.state is State.PROCEEDING
            and t.call_id == call.call_id
            for t in self._server.values()
        )

    def _grant_timer(
        self,
        call: Call,
        request: Request,
        ok: Response,
        timer: SessionTimer | None,
        now: float,
    ) -> None:
        """Put the negotiated session timer in our 2xx and (re)start it; None turns it off."""
        call.timer = timer
        if timer is None:
            return
        ok.headers.add("Session-Expires", timer.header(we_send_request=False))
        if supports(request.headers, "timer"):
            ok.headers.add("Require", "timer")
        timer.restart(now)

    def _on_info(
        self,
        call: Call,
        request: Request,
        tx: ServerInviteTransaction | ServerTransaction,
        now: float,
    ) -> None:
        text = request.body.decode("utf-8", "replace")
        if request.content_type == "application/dtmf-relay":
            signal, duration = _RELAY_SIGNAL.search(text), _RELAY_DURATION.search(text)
            digit = signal[1] if signal else ""
            millis = int(duration[1]) if duration else None
        elif request.content_type == "application/dtmf":
            digit, millis = text.strip(), None
        else:
            tx.respond(self._response(request, 415), now)
            return
        digit = {"10": "*", "11": "#"}.get(digit, digit).upper()
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            tx.respond(self._response(request, 400, reason="Bad DTMF"), now)
            return
        tx.respond(self._response(request, 200), now)
        self._events.append(DtmfInfo(call.call_id, digit, millis))

    def _on_notify(
        self,
        call: Call,
        request: Request,
        tx: ServerInviteTransaction | ServerTransaction,
        now: float,
    ) -> None:
        """Progress of a transfer we asked for: a ``message/sipfrag`` status line (RFC 3515)."""
        event = (request.headers.get("Event") or "").partition(";")[0].strip().lower()
        if event != "refer":
            tx.respond(self._response(request, 489, reason="Bad Event"), now)
            return
        found = _SIPFRAG_STATUS.match(request.body.decode("utf-8", "replace").lstrip())
        if found is None:
            tx.respond(self._response(request, 400, reason="Bad sipfrag"), now)
            return
        tx.respond(self._response(request, 200), now)
        state = (request.headers.get("Subscription-State") or "").strip().lower()
        status = int(found[1])
        final = state.startswith("terminated") or status >= 200
        self._events.append(TransferProgress(call.call_id, status, found[2].strip(), final))

    def _on_cancel(
        self, request: Request, tx: ServerInviteTransaction | ServerTransaction, now: float
    ) -> None:
        invite_key = (*server_key(request)[:3], "INVITE")
        invite_tx = self._server.get(invite_key)
        if not isinstance(invite_tx, ServerInviteTransaction):
            tx.respond(self._response(request, 481), now)
            return
        tx.respond(self._response(request, 200), now)
        self._sweep(now)  # the CANCEL's 200 goes out before the INVITE's 487
        call = self.calls.get(request.call_id)
        if invite_tx.state is State.PROCEEDING and call is not None:
            invite_tx.respond(self._response(call.invite, 487, call.local_tag), now)
            self._end(call, CallEnded(call.call_id, "cancelled"))

    def _on_ack(self, request: Request, now: float) -> None:
        """An ACK for a non-2xx response belongs to its INVITE transaction; one for a 2xx to
        the call's dialog."""
        tx = self._server.get(server_key(request))
        if isinstance(tx, ServerInviteTransaction):
            tx.receive_request(request, now)
            return
        call = self.calls.get(request.call_id)
        if call and call.dialog and call.dialog.matches(request):
            for t in self._server.values():
                if isinstance(t, ServerInviteTransaction) and t.call_id == call.call_id:
                    t.ack_received()
            if call.state == "answered" and call.offer_cseq == request.cseq[0]:
                call.offer_cseq = None  # a retransmitted ACK is not a second answer
                self._take_answer(call, request, now)

    def _take_answer(self, call: Call, ack: Request, now: float) -> None:
        """Apply the answer an ACK carries to the offer in our 200. A UAS that cannot use it
        (none, bad SDP, no common codec) ends the session (RFC 3261 §13.3.1.4)."""
        try:
            media = _answer_in(ack, call.local)
        except (_BodyError, SdpError) as exc:
            log.warning("call %s: unusable answer in the ACK: %s; hanging up", call.call_id, exc)
            self._send_bye(call, now)
            self._end(call, CallEnded(call.call_id, "unusable answer"))
            return
        call.media = media
        self._events.append(MediaUpdated(call.call_id, media))

    # -- responses ----------------------------------------------------------------------

    def _on_response(self, response: Response, now: float) -> None:
        tx = self._client.get(client_key(response))
        if tx is None:
            log.debug("stray response %s for %s", response.status, response.call_id)
            return
        delivered = tx.receive_response(response, now)
        if client_key(tx.request) in self._requested:
            if delivered is not None and delivered.status >= 200:
                self._finish_requested(tx, delivered)
            return
        call = self.calls.get(response.call_id)
        if delivered is None or call is None:
            return
        if tx.request.method == "REFER" and response.status >= 200:
            accepted = response.status < 300  # then NOTIFYs tell how the new call goes
            self._events.append(
                TransferProgress(call.call_id, response.status, response.reason, not accepted)
            )
        if tx.request.method == "UPDATE" and response.status >= 200:
            self._on_refreshed(call, response, now)
        if tx is call.refresh and response.status >= 200:
            self._on_refresh_invite_final(call, response, now)
            return
        if not isinstance(tx, ClientInviteTransaction):
            return
        if tx is not call.tx:
            return
        if response.status < 200:
            self._on_provisional(call, response, now)
        elif response.status < 300:
            self._on_invite_ok(call, response, now)
        elif self._retried(call, response, now):
            return
        elif call.state == "offering":
            self._end(call, CallFailed(call.call_id, response.status, response.reason))

    def _on_provisional(self, call: Call, response: Response, now: float) -> None:
        if call.state != "offering":
            return
        if response.status > 100:
            self._events.append(CallProgress(call.call_id, response.status, response.reason))
        if call.cancel_pending:
            call.cancel_pending = False
            self._send_cancel(call, now)

    def _on_invite_ok(self, call: Call, response: Response, now: float) -> None:
        if call.ack is not None:  # a retransmitted 2xx: the ACK was lost
            self._transmit(call.ack, call.remote)
            return
        call.dialog = Dialog.as_uac(call.tx.request, response)
        call.ack = call.dialog.request(
            "ACK",
            self._via(call.remote.transport),
            self._contact(call.remote.transport),
            cseq=call.tx.request.cseq[0],
        )
        self._transmit(call.ack, call.remote)
        if call.state != "offering":
            return
        try:
            call.media = _answer_in(response, call.local)
        except (_BodyError, SdpError) as exc:
            log.info("unusable answer for %s: %s", call.call_id, exc)
            self._send_bye(call, now)
            self._end(call, CallFailed(call.call_id, 488, "Not Acceptable Here"))
            return
        if call.cancel_pending:  # answered before our CANCEL could go out
            self._send_bye(call, now)
            self._end(call, CallFailed(call.call_id, 487, "Request Terminated"))
            return
        call.state = "answered"
        call.timer = self._granted_timer(call, response, now)
        call.peer_updates = _allows_update(response)
        self._events.append(CallAnswered(call.call_id, call.media, call.local.port))

    def _granted_timer(self, call: Call, response: Response, now: float) -> SessionTimer | None:
        """The session timer a 2xx to our INVITE or UPDATE grants, started (None: none)."""
        try:
            timer = negotiate_as_uac(response.headers)
        except ValueError as exc:
            log.warning("call %s: %s; no session timer", call.call_id, exc)
            return None
        if timer is not None:
            timer.restart(now)
        return timer

    def _retried(self, call: Call, response: Response, now: float) -> bool:
        """Whether a refusal got the INVITE sent again: with credentials (401, 407) or with a
        longer session interval (422)."""
        if response.status in (401, 407):
            return self._retry_with_credentials(call, response, now)
        return response.status == 422 and self._retry_with_min_se(call, response, now)

    def _retry_with_credentials(self, call: Call, response: Response, now: float) -> bool:
        """Re-send the INVITE once with Authorization / Proxy-Authorization."""
        previous = call.tx.request
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = response.headers.get(header)
        answered = "Authorization" in previous.headers or "Proxy-Authorization" in previous.headers
        if call.credentials is None or challenge is None or answered:
            return False
        username, password = call.credentials
        try:
            value = authorize(
                challenge, method="INVITE", uri=previous.uri, username=username, password=password
            )
        except ValueError:
            return False
        reply_header = "Authorization" if response.status == 401 else "Proxy-Authorization"
        self._resend_invite(call, now, {reply_header: value})
        return True

    def _retry_with_min_se(self, call: Call, response: Response, now: float) -> bool:
        """422 (RFC 4028 §7.4): ask again with the interval the far end's Min-SE demands."""
        asked = call.tx.request.headers.get("Session-Expires") or "0"
        min_se = _min_se(response)
        if not asked.isdigit() or not int(asked) < min_se <= 86400:
            return False  # a second 422, or an absurd (or no) demand
        self._resend_invite(call, now, {"Session-Expires": str(min_se), "Min-SE": str(min_se)})
        return True

    def _resend_invite(self, call: Call, now: float, changes: dict[str, str]) -> None:
        """The INVITE again in a new transaction (next CSeq), with ``changes`` set."""
        previous = call.tx.request
        invite = Request(headers=previous.headers.copy(), method="INVITE", uri=previous.uri)
        invite.body = previous.body
        invite.headers.set("Via", self._via(call.remote.transport))
        invite.headers.set("CSeq", f"{previous.cseq[0] + 1} INVITE")
        for name, value in changes.items():
            invite.headers.set(name, value)
        call.invite = invite
        call.tx = ClientInviteTransaction(invite, call.remote, self.config.timers, now)
        self._client[client_key(invite)] = call.tx

    # -- session timers (RFC 4028) ------------------------------------------------------

    def _session_timers(self) -> list[SessionTimer]:
        return [c.timer for c in self.calls.values() if c.state == "answered" and c.timer]

    def _on_session_timer(self, call: Call, now: float) -> None:
        assert call.timer is not None
        due = call.timer.due(now)
        if due == "refresh":
            self._refresh(call, call.timer, now)
        elif due == "expire":
            self._session_over(call, f"no session refresh in {call.timer.interval} s", now)

    def _refresh(self, call: Call, timer: SessionTimer, now: float) -> None:
        """Refresh the session (RFC 4028 §7.4): with an UPDATE without a body when the peer
        allows UPDATE (no media renegotiation, no ACK), else with a re-INVITE offering our
        media again."""
        assert call.dialog is not None
        transport = call.remote.transport
        method = "UPDATE" if call.peer_updates else "INVITE"
        refresh = call.dialog.request(method, self._via(transport), self._contact(transport))
        refresh.headers.add("Session-Expires", timer.header(we_send_request=True))
        refresh.headers.add("Min-SE", str(min(self.config.min_se, timer.interval)))
        refresh.headers.add("Supported", ", ".join(SUPPORTED))
        if method == "UPDATE":
            self._start_client(refresh, call.remote, now)
            return
        _set_sdp(refresh, call.local.offer())
        call.refresh_ack = None
        call.refresh = ClientInviteTransaction(refresh, call.remote, self.config.timers, now)
        self._client[client_key(refresh)] = call.refresh

    def _on_refresh_invite_final(self, call: Call, response: Response, now: float) -> None:
        """A final response to our refreshing re-INVITE: a 2xx is ACKed (again, when it is
        retransmitted) and its answer applied; the timer then goes as for an UPDATE."""
        assert call.refresh is not None and call.dialog is not None
        if response.status >= 300:
            self._on_refreshed(call, response, now)
            return
        if call.refresh_ack is not None:
            self._transmit(call.refresh_ack, call.remote)
            return
        transport = call.remote.transport
        cseq = call.refresh.request.cseq[0]
        ack = call.dialog.request("ACK", self._via(transport), self._contact(transport), cseq)
        call.refresh_ack = ack
        self._transmit(ack, call.remote)
        if call.state != "answered":
            return
        try:
            media = _answer_in(response, call.local)
        except (_BodyError, SdpError) as exc:
            self._session_over(call, f"unusable answer to the refresh: {exc}", now)
            return
        if media != call.media:
            call.media = media
            self._events.append(MediaUpdated(call.call_id, media))
        self._on_refreshed(call, response, now)

    def _on_refreshed(self, call: Call, response: Response, now: float) -> None:
        """The outcome of our refreshing UPDATE or re-INVITE."""
        if call.state != "answered" or call.timer is None:
            return
        if response.status < 300:
            call.timer = self._granted_timer(call, response, now)
        elif response.status == 422 and (larger := _min_se(response)) > call.timer.interval:
            call.timer.interval = larger
            self._refresh(call, call.timer, now)
        elif response.status in (405, 501) and call.peer_updates:  # it said it allowed UPDATE
            call.peer_updates = False
            self._refresh(call, call.timer, now)
        elif response.status in (408, 481):  # the dialog is gone (§10)
            self._session_over(call, f"session refresh got {response.status}", now)

    def _session_over(self, call: Call, why: str, now: float) -> None:
        log.warning("call %s: %s; hanging up", call.call_id, why)
        self._send_bye(call, now)
        self._end(call, CallEnded(call.call_id, "session expired"))

    # -- helpers ------------------------------------------------------------------------

    def _send_cancel(self, call: Call, now: float) -> None:
        invite = call.tx.request
        headers = Headers()
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID", "Route"):
            for value in invite.headers.get_all(name):
                headers.add(name, value)
        headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
        cancel = Request(headers=headers, method="CANCEL", uri=invite.uri)
        self._start_client(cancel, call.remote, now)

    def _send_bye(self, call: Call, now: float) -> None:
        assert call.dialog is not None
        transport = call.remote.transport
        bye = call.dialog.request("BYE", self._via(transport), self._contact(transport))
        self._start_client(bye, call.remote, now)

    def _start_client(self, request: Request, remote: Address, now: float) -> None:
        tx = ClientTransaction(request, remote, self.config.timers, now)
        self._client[client_key(request)] = tx

    def _end(self, call: Call, event: CallEnded | CallFailed) -> None:
        call.state = "ended"
        self.config.rtp_ports.release(call.local.port)
        self._events.append(event)

    def _sweep(self, now: float) -> None:
        """Transmit what transactions queued; react to and forget finished ones."""
        timed_out: list[Transaction] = []
        tables: tuple[dict, ...] = (self._server, self._client)
        for table in tables:
            for key, tx in list(table.items()):
                for message in tx.outbox:
                    self._transmit(message, tx.remote)
                tx.outbox.clear()
                if tx.terminated:
                    del table[key]
                    timed_out += [tx] if tx.timed_out else []
        for tx in timed_out:
            self._on_timeout(tx, now)
        if timed_out:
            self._sweep(now)  # send what the reactions queued (a BYE)
            return
        ended = [call_id for call_id, call in self.calls.items() if call.state == "ended"]
        if ended:
            # Transactions of an ended call still absorb retransmissions: keep it until then.
            busy = {t.call_id for table in tables for t in table.values()}
            for call_id in ended:
                if call_id not in busy:
                    del self.calls[call_id]

    def _on_timeout(self, tx: Transaction, now: float) -> None:
        if client_key(tx.request) in self._requested:
            self._finish_requested(tx, None)
            return
        call = self.calls.get(tx.request.call_id)
        if call is None or call.state == "ended":
            return
        if isinstance(tx, ServerInviteTransaction) and call.state == "answered":
            log.warning("no ACK for %s: hanging up", call.call_id)
            self._send_bye(call, now)
            self._end(call, CallEnded(call.call_id, "no ACK"))
        elif isinstance(tx, ClientInviteTransaction) and tx is call.tx:
            self._end(call, CallFailed(call.call_id, 408, "Request Timeout"))
        elif tx.request.method == "REFER":
            self._events.append(TransferProgress(call.call_id, 408, "Request Timeout", True))
        elif (tx.request.method == "UPDATE" or tx is call.refresh) and call.state == "answered":
            self._session_over(call, "session refresh timed out", now)

    def _finish_requested(self, tx: Transaction, response: Response | None) -> None:
        self._requested.discard(client_key(tx.request))
        self._outcomes.append((tx.request, response))

    def _refuse(self, message: Message, source: Address) -> None:
        """Answer a request from a source outside the allow-list (never an ACK or response)."""
        status = self.config.allow_list_status
        if isinstance(message, Request) and message.method != "ACK" and status is not None:
            log.info("refused %s from %s: not in the allow-list", message.method, source.host)
            self._transmit(self._response(message, status), source)

    def _transmit(self, message: Message, remote: Address) -> None:
        self._outgoing.append((message.serialise(), remote))

    def _response(
        self, request: Request, status: int, to_tag: str | None = None, reason: str = ""
    ) -> Response:
        response = response_to(request, status, reason, to_tag or _new_tag())
        response.headers.add("Server", self.config.user_agent)
        if request.method == "INVITE" and 100 < status < 300:
            response.headers.add("Contact", self._contact(self._via_transport(request)))
        if request.method in ("INVITE", "UPDATE", "OPTIONS") and 100 < status < 300:
            response.headers.add("Allow", ", ".join(ALLOWED))
            response.headers.add("Supported", ", ".join(SUPPORTED))
        return response

    def _refusal(self, request: Request, error: Exception) -> Response:
        """The response to a request whose body or session timer we cannot accept."""
        if isinstance(error, TooSmall):  # RFC 4028 §8.1
            reply = self._response(request, 422)
            reply.headers.add("Min-SE", str(error.min_se))
        elif isinstance(error, _BodyError):
            reply = self._response(request, error.status)
            if error.status == 415:
                reply.headers.add("Accept", ACCEPT)  # RFC 3261 §21.4.13
        else:
            reply = self._response(request, 400, reason=_printable(str(error)))
        return reply

    def _local_media(self, port: int) -> LocalMedia:
        address = self.config.media_address or self.config.host
        return LocalMedia(address, port, self.config.codecs, self.config.ptime)

    def _via(self, transport: str) -> str:
        host, port = self.config.host, self.config.port
        return f"SIP/2.0/{transport.upper()} {host}:{port};branch={new_branch()};rport"

    def _contact(self, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        uri = SipUri(self.config.host, self.config.user, self.config.port)
        return f"<{uri}{suffix}>"

    @staticmethod
    def _via_transport(request: Request) -> str:
        return request.top_via.transport.lower()


class _BodyError(Exception):
    """A body that is not usable SDP; ``status`` is what a request carrying it gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _sdp_body(message: Message) -> SessionDescription | None:
    """The message's SDP, None when it has none (an INVITE's late offer).

    In a multipart body (SIP-I's SDP + ISUP, QSIG tunnelling) the SDP part counts; the others
    are ignored unless marked ``handling=required`` (RFC 3261 §20.11, RFC 5621 §9.1).
    """
    body, content_type = message.body, message.content_type
    if not body.strip():
        return None
    if content_type in MULTIPART:
        try:
            parts = parse_parts(body, message.headers.get("Content-Type") or "")
        except MultipartError as exc:
            raise _BodyError(400, f"bad multipart body: {exc}") from None
        for part in parts:
            if part.required and part.content_type not in UNDERSTOOD:
                raise _BodyError(415, f"a required {part.content_type!r} part")
        sdp = next((p for p in parts if p.content_type == "application/sdp"), None)
        if sdp is None or not sdp.body.strip():
            return None
        body, content_type = sdp.body, sdp.content_type
    if content_type != "application/sdp":
        raise _BodyError(415, f"body is {content_type!r}, not application/sdp")
    try:
        return SessionDescription.parse(body)
    except SdpError as exc:
        raise _BodyError(400, f"bad SDP: {exc}") from None


def _answer_in(message: Message, local: LocalMedia) -> NegotiatedMedia:
    """The media the SDP answer in ``message`` (to our offer) agrees; raises :class:`SdpError`
    or :class:`_BodyError` when it has none or it is unusable."""
    answer = _sdp_body(message)
    if answer is None:
        carrier = message.method if isinstance(message, Request) else "2xx"
        raise SdpError(f"the {carrier} has no SDP answer")
    return local.accept(answer)


def _allows_update(message: Message) -> bool:
    return "UPDATE" in (method.strip().upper() for method in message.headers.get_all("Allow"))


def _unsupported(request: Request) -> list[str]:
    """The option tags the request's Require names that we do not support."""
    tags = [tag.strip() for tag in request.headers.get_all("Require")]
    return [tag for tag in tags if tag and tag.lower() not in SUPPORTED]


def _min_se(message: Message) -> int:
    """The Min-SE of a request or a 422 (0 when absent or malformed)."""
    value = (message.headers.get("Min-SE") or "").partition(";")[0].strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else 0


def _set_sdp(message: Message, sdp: SessionDescription) -> None:
    message.headers.set("Content-Type", "application/sdp")
    message.body = sdp.serialise()


def _new_tag() -> str:
    return secrets.token_hex(6)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:80]
