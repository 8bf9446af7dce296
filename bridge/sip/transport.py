"""Thin asyncio adapters moving SIP bytes: one UDP socket, and TCP connections framed by
Content-Length. They know nothing of SIP beyond framing; every message goes to ``deliver``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bridge.sip.framing import StreamFramer
from bridge.sip.message import SipParseError
from bridge.sip.transaction import Address

log = logging.getLogger(__name__)
Deliver = Callable[[bytes, Address], None]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.deliver(data, Address("udp", addr[0], addr[1]))


class _Stream(asyncio.Protocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.transport, self.peer = transport, Address("tcp", host, port)
        self.owner.connections[self.peer] = self

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.info("closing SIP/TCP connection from %s: %s", self.peer, exc)
            self.transport.close()
            return
        for message in messages:
            self.owner.deliver(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]


class SipTransport:
    """UDP and TCP listening on the same host and port; sends over either."""

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.connections: dict[Address, _Stream] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._pending: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, tcp: bool = True) -> int:
        """Bind (``port`` 0: any free port, the same for UDP and TCP); return the port."""
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self.deliver), local_addr=(host, port)
        )
        self._udp = udp
        port = udp.get_extra_info("sockname")[1]
        if tcp:
            self._server = await loop.create_server(lambda: _Stream(self), host, port)
        return port

    def send(self, data: bytes, remote: Address) -> None:
        if remote.transport == "udp":
            assert self._udp is not None
            self._udp.sendto(data, (remote.host, remote.port))
        elif connection := self.connections.get(remote):
            assert connection.transport is not None
            connection.transport.write(data)
        elif remote in self._pending:
            self._pending[remote].append(data)
        else:
            self._pending[remote] = [data]
            task = asyncio.get_running_loop().create_task(self._connect(remote))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, remote: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _Stream(self), remote.host, remote.port
            )
        except OSError as exc:
            log.warning("SIP/TCP connect to %s failed: %s", remote, exc)
            self._pending.pop(remote, None)
            return
        # Replies come back on this connection, so it is also filed under the target address.
        stream = transport.get_protocol()
        assert isinstance(stream, _Stream)
        self.connections[remote] = stream
        for data in self._pending.pop(remote, []):
            transport.write(data)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
