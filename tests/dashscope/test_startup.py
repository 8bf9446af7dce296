"""Start-up with DashScope providers: a missing key stops ``bridge serve`` before it binds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge.emulator.server import Emulator
from tests.dashscope.conftest import KEY

pytestmark = pytest.mark.timeout(60)


def test_serve_without_key_fails_before_binding_a_port(tmp_path: Path) -> None:
    config = tmp_path / "cloud.yaml"
    config.write_text("speech:\n  tts:\n    provider: dashscope\n")
    env = {k: v for k, v in os.environ.items() if k != "DASHSCOPE_API_KEY"}
    # Hold the ports the bridge would bind: binding first would fail with "address in use".
    with socket.socket() as http, socket.socket(type=socket.SOCK_DGRAM) as sip:
        http.bind(("127.0.0.1", 0))
        http.listen()
        sip.bind(("127.0.0.1", 0))
        done = subprocess.run(
            [
                *(sys.executable, "-m", "bridge.cli", "serve", "--config", str(config)),
                *("--http-host", "127.0.0.1", "--http-port", str(http.getsockname()[1])),
                *("--sip-host", "127.0.0.1", "--sip-port", str(sip.getsockname()[1])),
                *("--records-dir", str(tmp_path / "records")),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
        )
    assert done.returncode == 2, done.stderr
    assert "speech.tts.provider is 'dashscope' but DASHSCOPE_API_KEY is not set" in done.stderr
    assert "in use" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "records").exists()


@pytest.mark.slow
async def test_serve_warms_the_cosyvoice_socket_before_the_first_call(
    tmp_path: Path, emulator: Emulator
) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "hello.yaml").write_text(
        "name: hello\nstart: hi\nsteps:\n  hi:\n    say: Hi.\n    hangup: done\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "emulated.yaml"
    config.write_text(
        f"http: {{host: 127.0.0.1, port: {port}}}\n"
        "sip: {enabled: false}\n"
        f"records: {{dir: {tmp_path / 'records'}}}\n"
        f"dialog: {{dialplans_dir: {tmp_path / 'plans'}, default_dialplan: hello, "
        "reload_interval_s: 0}\n"
        f"speech:\n  tts: {{provider: dashscope}}\n  dashscope: {{base_url: {emulator.base_url}}}\n"
    )
    env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "serve", "--config", str(config), env=env
    )
    try:
        async with aiohttp.ClientSession() as http:
            while True:  # the pytest timeout ends a bridge that never gets ready
                assert bridge.returncode is None, "bridge serve exited"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.2)
        # Ready, no call placed yet: the voice's sockets are open, each with a task started.
        assert emulator.handshakes == emulator.tasks_started == 2  # speech.dashscope.pool_size
    finally:
        if bridge.returncode is None:
            bridge.terminate()
        await bridge.wait()
