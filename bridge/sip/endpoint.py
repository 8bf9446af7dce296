"""The running SIP endpoint: the sans-I/O :class:`UserAgent` wired to sockets and the loop clock.

The call pipeline uses this class: iterate :meth:`SipEndpoint.next_event` for
``IncomingCall`` (then ``answer()``/``reject()``), ``CallAnswered``, ``CallEnded``,
``DtmfInfo``...; place calls with :meth:`call`; end them with :meth:`hangup`.
"""

from __future__ import annotations

import asyncio
import dataclasses

from bridge.sip.agent import AgentConfig, UserAgent
from bridge.sip.events import Event, IncomingCall
from bridge.sip.message import Request, Response
from bridge.sip.transaction import Address
from bridge.sip.transport import SipTransport


class SipEndpoint:
    def __init__(self, config: AgentConfig, bind_host: str = "127.0.0.1", port: int = 0) -> None:
        self.agent = UserAgent(config)
        self.bind_host = bind_host
        self.port = port
        self._transport = SipTransport(self._receive)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._requests: dict[Request, asyncio.Future[Response | None]] = {}

    async def start(self, tcp: bool = True) -> int:
        """Listen on UDP (and TCP) and return the bound port, also advertised in Via/Contact."""
        self.port = await self._transport.start(self.bind_host, self.port, tcp)
        self.agent.config.port = self.port
        return self.port

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for future in self._requests.values():
            future.cancel()
        await self._transport.close()

    async def __aenter__(self) -> SipEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def next_event(self) -> Event:
        return await self._events.get()

    def answer(self, call_id: str) -> None:
        self.agent.answer(call_id, self._now())
        self._pump()

    def reject(self, call_id: str, status: int = 486) -> None:
        self.agent.reject(call_id, status, self._now())
        self._pump()

    def call(
        self, target: str, from_user: str | None = None, credentials: tuple[str, str] | None = None
    ) -> str:
        call_id = self.agent.call(target, self._now(), from_user=from_user, credentials=credentials)
        self._pump()
        return call_id

    def cancel(self, call_id: str) -> None:
        self.agent.cancel(call_id, self._now())
        self._pump()

    def hangup(self, call_id: str) -> None:
        self.agent.hangup(call_id, self._now())
        self._pump()

    def refer(self, call_id: str, target: str) -> bool:
        """Blind-transfer an answered call to ``target``; progress comes as events."""
        sent = self.agent.refer(call_id, target, self._now())
        self._pump()
        return sent

    def request(self, request: Request, remote: Address) -> asyncio.Future[Response | None]:
        """Send an out-of-dialog request (REGISTER); the future gets its final response, or
        None when it timed out."""
        future: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self._requests[request] = future
        self.agent.send_request(request, remote, self._now())
        self._pump()
        return future

    def _receive(self, data: bytes, source: Address) -> None:
        self.agent.receive(data, source, self._now())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.agent.on_timer(self._now())
        self._pump()

    def _pump(self) -> None:
        """Send what the agent queued, publish its events, and re-arm the single timer."""
        for data, remote in self.agent.data_to_send():
            self._transport.send(data, remote)
        for event in self.agent.events():
            if isinstance(event, IncomingCall):
                event = dataclasses.replace(event, control=self)
            self._events.put_nowait(event)
        for request, response in self.agent.outcomes():
            future = self._requests.pop(request)
            if not future.done():
                future.set_result(response)
        deadline = self.agent.deadline
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
