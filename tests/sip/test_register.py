"""Trunk registration: the state machine on a fake clock against a scripted registrar, the
agent's hook for requests the application sends, and a real registrar (sipp) on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Application

from bridge.config import ConfigError, SipConfig, SipRegistrationConfig, load_config
from bridge.sip import api as sip_api
from bridge.sip.agent import AgentConfig, UserAgent
from bridge.sip.auth import AuthResult, DigestVerifier, parse_auth_header
from bridge.sip.endpoint import SipEndpoint
from bridge.sip.front import SipFront
from bridge.sip.message import Request, Response, parse_message
from bridge.sip.ports import PortAllocator
from bridge.sip.register import (
    Registration,
    RegistrationClient,
    RegistrationState,
    registrations,
)
from bridge.sip.transaction import Address, TimerConfig, response_to
from bridge.sip.uri import SipUri
from tests.sip.sipp import SCENARIOS, finish, free_port, start_sipp

USER, PASSWORD = "4930123", "secret"
CONFIG = SipRegistrationConfig(
    "sip:registrar.test:5080", USER, domain="trunk.test", password_env="TRUNK_PW", expires=600
)
CONTACT = SipUri("127.0.0.1", USER, 5062)
Reply = Callable[[Request, float], Response | None]


def _registration(password: str | None = PASSWORD, jitter: float = 0.0) -> Registration:
    return Registration(CONFIG, password, CONTACT, jitter=lambda: jitter)


def _response(request: Request, status: int, *headers: tuple[str, str]) -> Response:
    response = response_to(request, status, to_tag="registrar")
    for name, value in headers:
        response.headers.add(name, value)
    return response


class Registrar:
    """A scripted registrar that really checks digest answers (with the bridge's verifier)."""

    def __init__(self, algorithms: tuple[str, ...] = ("MD5",), password: str = PASSWORD) -> None:
        self.verifier = DigestVerifier("trunk.test", {USER: password}, algorithms=algorithms)
        self.issued = 0

    def challenge(self, stale: bool = False, status: int = 401) -> Reply:
        header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"

        def reply(request: Request, now: float) -> Response:
            self.issued += 1  # nonces are stamped to the millisecond: each one fresh
            challenges = self.verifier.challenges(now + self.issued / 1000, stale)
            return _response(request, status, *((header, c) for c in challenges))

        return reply

    def ok(self, *headers: tuple[str, str]) -> Reply:
        """200 if the request's Authorization answers a challenge correctly, else 403."""

        def reply(request: Request, now: float) -> Response:
            result = self.verifier.check("REGISTER", request.headers.get("Authorization"), now)
            return _response(request, 200 if result is AuthResult.OK else 403, *headers)

        return reply


def ok(*headers: tuple[str, str]) -> Reply:
    return lambda request, now: _response(request, 200, *headers)


def status(code: int, *headers: tuple[str, str]) -> Reply:
    return lambda request, now: _response(request, code, *headers)


def timeout(request: Request, now: float) -> None:
    return None


def _run(registration: Registration, replies: list[Reply], now: float = 0.0) -> list[Request]:
    """Start, answer each REGISTER in turn; return every REGISTER sent."""
    sent = registration.start(now)
    for reply in replies:
        assert len(sent) >= 1 and registration.deadline is None
        sent += registration.on_response(reply(sent[-1], now), now)
    return sent


MD5 = Registrar()
BOTH = Registrar(("SHA-256", "MD5"))
EXPIRES = ("Expires", "600")
WRONG = Registrar(password="not-the-secret")
AUTH_INT = 'Digest nonce="n", qop="auth-int"'
REGISTERED, FAILED = RegistrationState.REGISTERED, RegistrationState.FAILED


@pytest.mark.parametrize(
    ("replies", "password", "sent", "state", "sip_status", "deadline"),
    [
        # Granted by the Expires header: refresh 30 s before the binding lapses.
        ([ok(EXPIRES)], PASSWORD, 1, REGISTERED, 200, 570.0),
        # Our Contact's expires parameter wins over the Expires header.
        ([ok(("Contact", f"<{CONTACT}>;expires=120"), EXPIRES)], PASSWORD, 1, REGISTERED, 200, 90),
        # Another binding's expires is not ours; then nothing granted: what we asked for.
        ([ok(("Contact", "<sip:other@10.0.0.9>;expires=60"))], PASSWORD, 1, REGISTERED, 200, 570),
        # A short grant is refreshed half-way.
        ([ok(("Expires", "2"))], PASSWORD, 1, REGISTERED, 200, 1.0),
        ([MD5.challenge(), MD5.ok(EXPIRES)], PASSWORD, 2, REGISTERED, 200, 570),
        ([BOTH.challenge(), BOTH.ok(EXPIRES)], PASSWORD, 2, REGISTERED, 200, 570),
        # A proxy challenge, then the registrar's: both answers go in the last REGISTER.
        ([MD5.challenge(status=407), MD5.challenge(), MD5.ok()], PASSWORD, 3, REGISTERED, 200, 570),
        # Stale nonce: answered again with the new nonce.
        ([MD5.challenge(), MD5.challenge(stale=True), MD5.ok()], PASSWORD, 3, REGISTERED, 200, 570),
        # Wrong password: the second challenge is not answered; retry after back-off.
        ([WRONG.challenge(), WRONG.challenge()], "bad", 2, FAILED, 401, 5.0),
        ([MD5.challenge()], None, 1, FAILED, 401, 5.0),
        # Endless stale challenges are not followed for ever.
        ([MD5.challenge()] + [MD5.challenge(stale=True)] * 3, PASSWORD, 4, FAILED, 401, 5.0),
        # Nothing we can answer (qop=auth-int).
        ([status(401, ("WWW-Authenticate", AUTH_INT))], PASSWORD, 1, FAILED, 401, 5.0),
        ([status(423, ("Min-Expires", "1200")), ok()], PASSWORD, 2, REGISTERED, 200, 1170),
        ([status(423, ("Min-Expires", "300"))], PASSWORD, 1, FAILED, 423, 5.0),
        ([status(423)], PASSWORD, 1, FAILED, 423, 5.0),
        ([status(403)], PASSWORD, 1, FAILED, 403, 5.0),
        ([status(503)], PASSWORD, 1, FAILED, 503, 5.0),
        ([timeout], PASSWORD, 1, FAILED, 408, 5.0),
        ([ok(("Expires", "0"))], PASSWORD, 1, FAILED, 200, 5.0),
    ],
)
def test_register_outcomes(
    replies: list[Reply],
    password: str | None,
    sent: int,
    state: RegistrationState,
    sip_status: int,
    deadline: float,
) -> None:
    registration = _registration(password)
    requests = _run(registration, replies)
    assert len(requests) == sent
    assert registration.state is state and registration.sip_status == sip_status
    assert registration.deadline == pytest.approx(deadline)
    assert (registration.bound_until is None) == (state is FAILED)


def test_register_request_shape() -> None:
    first, second = _run(_registration(), [MD5.challenge()])
    assert first.method == "REGISTER" and first.uri == "sip:registrar.test:5080"
    assert str(first.from_.uri) == str(first.to.uri) == f"sip:{USER}@trunk.test"
    assert first.from_.tag and first.to.tag is None
    assert first.headers.get("Contact") == f"<sip:{USER}@127.0.0.1:5062>"
    assert first.headers.get("Expires") == "600" and "Authorization" not in first.headers
    assert second.call_id == first.call_id and second.cseq == (2, "REGISTER")
    _, params = parse_auth_header(second.headers.get("Authorization") or "")
    assert params["username"] == USER and params["uri"] == first.uri


def test_strongest_algorithm_is_answered() -> None:
    *_, last = _run(_registration(), [BOTH.challenge(), BOTH.ok()])
    _, params = parse_auth_header(last.headers.get("Authorization") or "")
    assert params["algorithm"] == "SHA-256"


def test_proxy_and_registrar_answers_both_sent() -> None:
    *_, last = _run(_registration(), [MD5.challenge(status=407), MD5.challenge()])
    assert "Proxy-Authorization" in last.headers and "Authorization" in last.headers


def test_423_raises_what_later_refreshes_ask_for() -> None:
    registration = _registration()
    _, retry = _run(registration, [status(423, ("Min-Expires", "1200")), ok()])
    assert retry.headers.get("Expires") == "1200"
    (refresh,) = registration.on_timer(1170.0)
    assert refresh.headers.get("Expires") == "1200"


@pytest.mark.parametrize(
    ("jitter", "delays"),
    [
        (0.0, [5, 10, 20, 40, 80, 160, 300, 300]),
        (1.0, [4, 8, 16, 32, 64, 128, 240, 240]),  # up to 20 % early
    ],
)
def test_failures_back_off_exponentially_capped(jitter: float, delays: list[float]) -> None:
    registration = _registration(jitter=jitter)
    now = 0.0
    registration.start(now)
    for delay in delays:
        assert registration.on_response(None, now) == []
        assert registration.state is FAILED and registration.sip_status == 408
        assert registration.deadline == pytest.approx(now + delay)
        assert registration.on_timer(now + delay - 0.01) == []
        now += delay
        (retry,) = registration.on_timer(now)
        assert retry.headers.get("Authorization") is None
    registration.on_response(_response(retry, 200), now)  # success starts the back-off afresh
    assert registration.state is REGISTERED
    assert len(registration.on_timer(now + 570)) == 1
    registration.on_response(None, now + 570)
    assert registration.deadline == pytest.approx(now + 570 + delays[0])


def test_refresh_before_expiry_is_challenged_afresh() -> None:
    registration = _registration()
    _run(registration, [MD5.challenge(), MD5.ok(EXPIRES)])
    assert registration.on_timer(569.9) == []
    (refresh,) = registration.on_timer(570.0)
    assert refresh.cseq == (3, "REGISTER") and "Authorization" not in refresh.headers
    (answer,) = registration.on_response(MD5.challenge()(refresh, 570.0), 570.0)
    assert registration.on_response(MD5.ok(("Expires", "100"))(answer, 570.5), 570.5) == []
    assert registration.state is REGISTERED and registration.bound_until == 670.5
    assert registration.deadline == pytest.approx(640.5)  # 30 s before it lapses


def test_failed_refresh_keeps_binding_until_it_lapses() -> None:
    registration = _registration()
    _run(registration, [ok(EXPIRES)])
    assert len(registration.on_timer(570.0)) == 1
    registration.on_response(None, 602.0)
    assert registration.state is FAILED and registration.deadline == pytest.approx(607.0)
    assert registration.status(602.0)["expires_in"] == 0.0
    assert registration.stop(602.0) == [] and registration.stopped  # lapsed: nothing to remove


def test_unregister_answers_the_challenge() -> None:
    registration = _registration()
    _run(registration, [MD5.challenge(), MD5.ok(EXPIRES)])
    (removal,) = registration.stop(10.0)
    assert registration.state is RegistrationState.UNREGISTERING and not registration.stopped
    assert removal.headers.get("Expires") == "0" and registration.deadline is None
    assert removal.headers.get("Contact") == f"<{CONTACT}>"
    (answer,) = registration.on_response(MD5.challenge()(removal, 10.0), 10.0)
    assert answer.headers.get("Expires") == "0"
    assert registration.on_response(MD5.ok()(answer, 10.1), 10.1) == []
    assert registration.state is RegistrationState.UNREGISTERED and registration.stopped
    assert registration.sip_status == 200 and registration.bound_until is None


def test_stop_waits_for_the_pending_register() -> None:
    registration = _registration()
    (register,) = registration.start(0.0)
    assert registration.stop(0.1) == [] and not registration.stopped
    (removal,) = registration.on_response(_response(register, 200, EXPIRES), 0.2)
    assert removal.headers.get("Expires") == "0"
    assert registration.on_response(None, 32.2) == []  # an unregister is tried once
    assert registration.stopped and registration.state is RegistrationState.UNREGISTERED


def test_stop_while_challenged_does_not_register_first() -> None:
    registration = _registration()
    (register,) = registration.start(0.0)
    registration.stop(0.1)
    assert registration.on_response(MD5.challenge()(register, 0.2), 0.2) == []
    assert registration.stopped and registration.state is RegistrationState.UNREGISTERED


def test_status_for_the_api() -> None:
    registration = _registration()
    _run(registration, [status(503)], now=100.0)
    assert registration.status(101.0) == {
        "aor": f"sip:{USER}@trunk.test",
        "registrar": "sip:registrar.test:5080",
        "state": "failed",
        "sip_status": 503,
        "reason": "Service Unavailable",
        "expires_in": None,
        "next_attempt_in": 4.0,
    }


# --- configuration ---------------------------------------------------------------------------


def test_registrations_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "sip:\n"
        "  registrations:\n"
        "    - registrar: sip:sip.example.net:5070\n"
        "      user: '4930123'\n"
        "      password_env: TRUNK_PW\n"
        "      transport: tcp\n"
    )
    (trunk,) = load_config(path).sip.registrations
    assert trunk == SipRegistrationConfig(
        "sip:sip.example.net:5070", "4930123", password_env="TRUNK_PW", transport="tcp"
    )
    agent = AgentConfig(PortAllocator(30000, 30010), host="192.0.2.10", port=5099)
    sip = SipConfig(registrations=[trunk])
    (registration,) = registrations(sip, agent, {"TRUNK_PW": PASSWORD})
    assert registration.remote == Address("tcp", "sip.example.net", 5070)
    assert str(registration.aor) == "sip:4930123@sip.example.net"
    assert str(registration.contact) == "sip:4930123@192.0.2.10:5099;transport=tcp"
    with pytest.raises(ConfigError, match="TRUNK_PW is not set"):
        registrations(sip, agent, {})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("registrar: pbx.example.net", "is not a SIP URI"),
        ("registrar: sip:trunk@pbx.example.net", "must be just sip:host"),
        ("registrar: sip:pbx.example.net\n      expires: 0", "expires: must be a positive"),
        ("user: x", "missing required key 'registrar'"),
    ],
)
def test_bad_registrations_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "bridge.yaml"
    user = "" if entry.startswith("user") else "\n      user: x"
    path.write_text(f"sip:\n  registrations:\n    - {entry}{user}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# --- the agent's hook for requests the application sends ----------------------------------


def test_agent_delivers_final_response_or_timeout() -> None:
    agent = UserAgent(AgentConfig(PortAllocator(30000, 30010), port=5062))
    registrar = Address("udp", "127.0.0.1", 5080)
    register = _registration().start(0.0)[0]
    agent.send_request(register, registrar, 0.0)
    ((data, remote),) = agent.data_to_send()
    sent = parse_message(data)
    assert remote == registrar and sent.headers.get("Via") == next(iter(sent.headers))[1]
    assert sent.top_via.sent_by == ("127.0.0.1", 5062)
    agent.receive(_response(register, 100).serialise(), registrar, 0.1)
    assert agent.outcomes() == []
    ok = _response(register, 200)
    agent.receive(ok.serialise(), registrar, 0.2)
    ((request, response),) = agent.outcomes()
    assert request is register and response is not None and response.status == 200
    assert agent.events() == []

    again = _registration().start(1.0)[0]
    agent.send_request(again, registrar, 1.0)
    while (deadline := agent.deadline) is not None:
        agent.on_timer(deadline)
    assert agent.outcomes() == [(again, None)]  # timer F: 64*T1 without an answer


# --- a real registrar -------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.timeout(60)
async def test_sipp_registrar_register_refresh_unregister() -> None:
    port = free_port()
    sipp = await start_sipp(
        "-sf", str(SCENARIOS / "registrar.xml"), "-p", str(port),
        "-set", "user", USER, "-set", "password", PASSWORD,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let sipp bind
    config = AgentConfig(PortAllocator(30000, 30010), timers=TimerConfig(t1=0.25))
    async with SipEndpoint(config) as endpoint:
        trunk = replace(CONFIG, registrar=f"sip:127.0.0.1:{port}", domain=None, expires=60)
        registration = Registration(trunk, PASSWORD, SipUri("127.0.0.1", USER, endpoint.port))
        client = RegistrationClient(endpoint, registration)
        loop = asyncio.get_running_loop()
        client.start()
        first = await _bound(registration, None)
        assert registration.state is REGISTERED
        assert first - loop.time() == pytest.approx(2.0, abs=0.3)  # the Contact's expires=2
        second = await _bound(registration, first)  # refreshed half-way, by the Expires header
        assert second - first == pytest.approx(1.0, abs=0.3)
        await client.stop()
        assert registration.state is RegistrationState.UNREGISTERED
        assert registration.sip_status == 200 and registration.stopped
    result = await finish(sipp)
    assert result.returncode == 0, result.output


async def _bound(registration: Registration, previous: float | None) -> float:
    """Wait until the registrar grants a new binding; return when it lapses."""
    async with asyncio.timeout(10):
        while registration.bound_until in (None, previous):
            await asyncio.sleep(0.02)
    assert registration.bound_until is not None
    return registration.bound_until


@pytest.mark.peer
@pytest.mark.timeout(60)
async def test_front_door_registers_shows_status_and_unregisters_on_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUNK_PW", PASSWORD)
    port = free_port()
    sipp = await start_sipp(
        "-sf", str(SCENARIOS / "registrar.xml"), "-p", str(port),
        "-set", "user", USER, "-set", "password", PASSWORD,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    rtp = free_port() & ~1
    trunk = replace(CONFIG, registrar=f"sip:127.0.0.1:{port}", domain=None, expires=60)
    sip = SipConfig(
        port=0, transports=["udp"], rtp_ports=f"{rtp}-{rtp + 10}", registrations=[trunk]
    )
    front = SipFront(None, sip)  # type: ignore[arg-type]  # no calls: no bridge needed
    await front.start()
    app = Application()
    sip_api.add_routes(app, front)
    request = make_mocked_request("GET", "/api/sip/registrations", app=app)
    try:
        async with asyncio.timeout(10):
            while front.registration_status()[0]["state"] != "registered":
                await asyncio.sleep(0.02)
        reply = await sip_api.registration_status(request)
        (shown,) = json.loads(reply.text or "")["registrations"]
        assert shown["state"] == "registered" and shown["sip_status"] == 200
        assert shown["aor"] == f"sip:{USER}@127.0.0.1" and 0 < shown["expires_in"] <= 2
        await asyncio.sleep(1.5)  # the refresh, half-way through the 2 s granted
    finally:
        await front.close()
    assert front.registration_status()[0]["state"] == "unregistered"
    result = await finish(sipp)
    assert result.returncode == 0, result.output
