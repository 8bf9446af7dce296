"""Thin asyncio adapter: open DashScope sockets with back-off, map failures, pool warm sockets."""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.speech.dashscope.errors import (
    AuthError,
    ConnectionLostError,
    DashScopeError,
    ProtocolError,
    RateLimitError,
)
from bridge.speech.dashscope.realtime_protocol import RealtimeClient, encode
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.task_protocol import TaskClient

log = logging.getLogger(__name__)

SESSION_TIMEOUT = 10.0
IDLE_LIMIT = 50.0  # the server drops a task socket 60 s after its last task; stay clear of it


def backoff_delays(settings: DashScopeSettings) -> list[float]:
    """Delays before each retry after HTTP 429 (exponential)."""
    return [
        settings.backoff_initial * settings.backoff_factor**i
        for i in range(settings.max_handshake_retries)
    ]


async def open_socket(settings: DashScopeSettings, url: str) -> ClientConnection:
    """Connect, retrying 429 with exponential back-off; 401/403 become :class:`AuthError`."""
    delays = backoff_delays(settings)
    for attempt in range(len(delays) + 1):
        try:
            return await connect(
                url,
                additional_headers=settings.headers(),
                open_timeout=settings.connect_timeout,
                compression=None,
                max_size=None,
                ping_interval=20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthError(status, settings.workspace or settings.region) from None
            if status != 429:
                raise DashScopeError(f"DashScope handshake failed with HTTP {status}") from None
            if attempt == len(delays):
                raise RateLimitError(
                    f"DashScope kept answering HTTP 429 after {attempt + 1} attempts"
                ) from None
            log.info("DashScope handshake throttled (429), retrying in %.2fs", delays[attempt])
            await asyncio.sleep(delays[attempt])
        except (OSError, TimeoutError) as exc:
            raise ConnectionLostError(f"cannot connect to DashScope: {exc}") from None
    raise AssertionError("unreachable")


def closed_error(exc: ConnectionClosed) -> DashScopeError:
    """Map a close during a task: 1007 is the server rejecting a malformed request."""
    frame = exc.rcvd
    if frame is not None and frame.code == 1007:
        return ProtocolError(
            f"DashScope rejected the request as invalid (close 1007: {frame.reason})"
        )
    return ConnectionLostError(f"DashScope connection closed mid-task ({exc})")


class TaskConnection:
    """One task-protocol socket and its sans-I/O state."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.protocol = TaskClient()
        self.idle_since = time.monotonic()

    @property
    def usable(self) -> bool:
        return (
            self.protocol.reusable
            and self.ws.close_code is None
            and time.monotonic() - self.idle_since < IDLE_LIMIT
        )

    async def close(self) -> None:
        await self.ws.close()


class TaskPool:
    """A few pre-opened task sockets so a turn's first audio does not pay a handshake.

    Sockets are reused only after a clean ``task-finished`` and are dropped before the server's
    60 s idle limit; a failed socket is closed, never returned.
    """

    def __init__(self, settings: DashScopeSettings, size: int = 1) -> None:
        self.settings = settings
        self.size = size
        self._idle: list[TaskConnection] = []
        self._refills: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> TaskConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            await conn.close()
        return TaskConnection(await open_socket(self.settings, self.settings.inference_url))

    async def release(self, conn: TaskConnection) -> None:
        if conn.usable and len(self._idle) < self.size:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            return
        if not conn.protocol.reusable:
            self._refill()  # a failed or cancelled socket is replaced while the call goes on
        await conn.close()

    async def warm(self) -> None:
        """Open sockets up to ``size`` now (e.g. when a call is answered)."""
        while len(self._idle) < self.size:
            self._idle.append(
                TaskConnection(await open_socket(self.settings, self.settings.inference_url))
            )

    def _refill(self) -> None:
        if self.size > 0 and len(self._idle) + len(self._refills) < self.size:
            task = asyncio.get_running_loop().create_task(self._open_one())
            self._refills.add(task)
            task.add_done_callback(self._refills.discard)

    async def _open_one(self) -> None:
        try:
            conn = TaskConnection(await open_socket(self.settings, self.settings.inference_url))
        except DashScopeError as exc:
            log.info("warm DashScope socket not opened: %s", exc)
            return
        if len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            await conn.close()

    async def aclose(self) -> None:
        for task in list(self._refills):
            task.cancel()
        await asyncio.gather(*self._refills, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


async def open_realtime(
    settings: DashScopeSettings, model: str, session: dict[str, object]
) -> tuple[ClientConnection, RealtimeClient]:
    """Open a realtime session: wait for ``session.created``, configure, wait for the update."""
    ws = await open_socket(settings, settings.realtime_url(model))
    client = RealtimeClient()
    try:
        async with asyncio.timeout(SESSION_TIMEOUT):
            client.receive(await ws.recv())
            await ws.send(encode("session.update", session=session))
            while not client.configured:
                client.receive(await ws.recv())
    except TimeoutError:
        await ws.close()
        raise ConnectionLostError("realtime session was not configured within 10 s") from None
    except ConnectionClosed as exc:
        raise closed_error(exc) from None
    except DashScopeError:
        await ws.close()
        raise
    return ws, client
