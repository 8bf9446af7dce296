"""Minimal async driver for headless Chromium over the DevTools protocol (CDP).

No selenium/playwright: we launch the browser ourselves, read the debugging port from
``<profile>/DevToolsActivePort`` and speak CDP over one browser-level websocket, attaching
to page targets in "flatten" mode (commands carry a ``sessionId``).

    async with Chromium(fake_audio_wav=wav) as browser:
        page = await browser.new_page("http://127.0.0.1:8080/")
        await page.click("document.querySelector('button')")
        await page.wait_for("window.VoiceBridge.state === 'connected'", timeout=15)
        energy = await page.evaluate("fetchSomething()", await_promise=True)

Every wait is bounded; on exit the browser's whole process group is killed and the
throwaway profile removed, even when the body raised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp

from tests.peers.availability import require_binary

# Debian ships the real binary here; /usr/bin/chromium is a wrapper script that adds flags.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")

BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


STDERR_NOISE = ("dbus", "ALSA lib", "alsa_util", "PcmOpen")


class CDPError(RuntimeError):
    """A DevTools command failed or a page script threw."""


def find_chromium() -> str:
    """Path of the Chromium binary; fails under CI=true when missing, skips otherwise."""
    return require_binary(*CHROMIUM_CANDIDATES)


class Chromium:
    """One headless Chromium process with a fresh profile; use as an async context manager."""

    def __init__(
        self,
        fake_audio_wav: Path | None = None,
        *,
        binary: str | None = None,
        launch_timeout: float = 20.0,
        command_timeout: float = 15.0,
        extra_flags: tuple[str, ...] = (),
    ) -> None:
        self.fake_audio_wav = Path(fake_audio_wav) if fake_audio_wav else None
        self.binary = binary
        self.launch_timeout = launch_timeout
        self.command_timeout = command_timeout
        self.extra_flags = extra_flags
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self.pages: list[Page] = []
        self._profile: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._sessions: dict[str, Page] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Chromium:
        try:
            await self._launch()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _command_line(self, binary: str) -> list[str]:
        flags = list(BASE_FLAGS)
        if self.fake_audio_wav is not None:
            # %noloop: play the file once, then silence (a looping tone hides "stuck" bugs).
            insert_at = flags.index("--use-fake-device-for-media-stream") + 1
            flags.insert(
                insert_at, f"--use-file-for-fake-audio-capture={self.fake_audio_wav}%noloop"
            )
        return [binary, *flags, *self.extra_flags, f"--user-data-dir={self._profile}"]

    async def _launch(self) -> None:
        binary = self.binary or find_chromium()
        if self.fake_audio_wav is not None and not self.fake_audio_wav.is_file():
            raise FileNotFoundError(self.fake_audio_wav)
        self._profile = Path(tempfile.mkdtemp(prefix="cdp-profile-"))
        self._proc = await asyncio.create_subprocess_exec(
            *self._command_line(binary),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Own process group, so cleanup can take renderer/GPU/zygote children with it.
            start_new_session=True,
        )
        self._tasks.append(asyncio.create_task(self._drain_stderr()))
        port, path = await self._read_devtools_port()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._ws = await self._http.ws_connect(
            f"ws://127.0.0.1:{port}{path}", max_msg_size=0, heartbeat=None
        )
        self._tasks.append(asyncio.create_task(self._read_loop()))

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            # A container has no D-Bus or sound card; those complaints drown useful lines.
            if not any(noise in text for noise in STDERR_NOISE):
                self.stderr_tail.append(text)

    async def _read_devtools_port(self) -> tuple[int, str]:
        """Chromium writes "<port>\\n<browser ws path>" once it listens."""
        assert self._profile is not None and self._proc is not None
        marker = self._profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.launch_timeout
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"chromium exited with {self._proc.returncode}:\n" + self.diagnostics()
                )
            with contextlib.suppress(OSError):
                lines = marker.read_text().splitlines()
                if len(lines) >= 2 and lines[0].strip().isdigit():
                    return int(lines[0]), lines[1].strip()
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"no DevToolsActivePort after {self.launch_timeout}s\n{self.diagnostics()}"
        )

    async def close(self) -> None:
        """Close politely if we can, then kill the process group and delete the profile."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 2)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        await self._kill()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2)
        self._tasks.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("browser closed"))
        self._pending.clear()
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2)  # Browser.close may already be enough
        # Children (renderers, zygote) share the group even if the browser itself exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    # -- CDP plumbing ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif (session := data.get("sessionId")) and session in self._sessions:
                self._sessions[session]._on_event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("DevTools connection closed"))

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one CDP command and return its ``result``; raises CDPError on protocol errors."""
        if self._ws is None or self._ws.closed:
            raise CDPError("not connected to the browser")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._ws.send_str(json.dumps(message))
            reply = await asyncio.wait_for(future, timeout or self.command_timeout)
        finally:
            self._pending.pop(message_id, None)
        if "error" in reply:
            error = reply["error"]
            raise CDPError(f"{method}: {error.get('message')} {error.get('data', '')}")
        return reply.get("result", {})

    # -- pages -------------------------------------------------------------------------

    async def new_page(self, url: str, *, timeout: float = 15.0) -> Page:
        """Open a tab, attach to it and navigate to ``url``, waiting for the load event."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        self._sessions[page.session_id] = page
        self.pages.append(page)
        for domain in ("Runtime", "Page", "Log"):
            await page.send(f"{domain}.enable")
        await page.goto(url, timeout=timeout)
        return page

    def diagnostics(self) -> str:
        """Console output, page exceptions and the tail of the browser's stderr."""
        parts = [page.diagnostics() for page in self.pages]
        if self.stderr_tail:
            parts.append("chromium stderr (tail):\n  " + "\n  ".join(list(self.stderr_tail)[-30:]))
        return "\n".join(parts)


class Page:
    """One attached tab. Collects console messages and exceptions for failure reports."""

    def __init__(self, browser: Chromium, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self._load_event = asyncio.Event()

    async def send(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict:
        return await self.browser.send(method, params, session_id=self.session_id, **kw)

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_describe(arg) for arg in params.get("args", []))
            self.console.append(f"[{params.get('type')}] {text}")
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(_exception_text(params.get("exceptionDetails", {})))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(f"[{entry.get('level')}:{entry.get('source')}] {entry.get('text')}")
        elif method == "Page.loadEventFired":
            self._load_event.set()

    async def goto(self, url: str, *, timeout: float = 15.0) -> None:
        self._load_event.clear()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        try:
            await asyncio.wait_for(self._load_event.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{url} did not load in {timeout}s\n{self.diagnostics()}") from None

    async def evaluate(
        self, expression: str, *, await_promise: bool = True, timeout: float | None = None
    ) -> Any:
        """Evaluate a JS expression in the page and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "awaitPromise": await_promise,
                "returnByValue": True,
                "userGesture": True,
            },
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {_exception_text(result['exceptionDetails'])}")
        return result.get("result", {}).get("value")

    async def wait_for(
        self, predicate: str, *, timeout: float = 10.0, interval: float = 0.1
    ) -> Any:
        """Poll a JS expression (may return a promise) until it is truthy; return its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error: Exception | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                value = await self.evaluate(predicate, timeout=max(remaining, 0.5))
                last_error = None
                if value:
                    return value
            except (CDPError, TimeoutError) as error:
                last_error = error
            await asyncio.sleep(interval)
        detail = f" (last error: {last_error})" if last_error else ""
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {predicate!r}{detail}\n"
            + self.browser.diagnostics()
        )

    async def click(self, element_expression: str) -> None:
        """Real (trusted) mouse click in the middle of the element the expression returns.

        The expression may reach into shadow roots, which CSS selectors cannot.
        """
        box = await self.evaluate(
            f"""(() => {{
                const el = {element_expression};
                if (!el) return null;
                el.scrollIntoView({{block: 'center', inline: 'center'}});
                const r = el.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2,
                         w: r.width, h: r.height}};
            }})()"""
        )
        if not box or not box["w"] or not box["h"]:
            raise CDPError(f"nothing visible to click for {element_expression!r}")
        for event in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": event, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport (handy when a UI assertion fails)."""
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def diagnostics(self) -> str:
        lines = [f"page {self.target_id}:"]
        lines += [f"  console {line}" for line in self.console[-50:]]
        lines += [f"  exception {line}" for line in self.exceptions[-20:]]
        return "\n".join(lines)


def _describe(remote_object: dict[str, Any]) -> str:
    if "value" in remote_object:
        return str(remote_object["value"])
    return str(remote_object.get("description", remote_object.get("type", "?")))


def _exception_text(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    where = f"{details.get('url', '')}:{details.get('lineNumber', '?')}"
    return f"{exception.get('description') or details.get('text', 'exception')} at {where}"
