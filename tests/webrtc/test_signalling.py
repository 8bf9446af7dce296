"""The offer endpoint refuses bad input precisely and keeps serving."""

from __future__ import annotations

import aiohttp
import pytest

pytestmark = pytest.mark.slow

VALID_SDP_WITHOUT_AUDIO = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP 96\r\n"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"type": "answer", "sdp": "v=0"}', 400, "'type' must be"),
        (b'{"type": "offer"}', 400, "'sdp' must be"),
        (b'{"type": "offer", "sdp": ""}', 400, "'sdp' must be"),
        (
            b'{"type": "offer", "sdp": "%s"}' % VALID_SDP_WITHOUT_AUDIO.encode("unicode_escape"),
            400,
            "no audio",
        ),
        (b'{"type": "offer", "sdp": "m=audio garbage"}', 400, "invalid SDP"),
        (b'{"type": "offer", "sdp": "m=audio", "dialplan": 5}', 400, "'dialplan' must be"),
        (b'{"type": "offer", "sdp": "v=0 m=audio", "dialplan": "nope"}', 404, "unknown dialplan"),
        (b"{" + b" " * 70_000 + b"}", 413, "larger than"),
    ],
)
async def test_bad_offers_get_a_clear_4xx(bridge_server, body, status, message) -> None:
    base_url, _bridge = bridge_server
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/api/webrtc/offer", data=body) as response:
            payload = await response.json()
            assert response.status == status, payload
            assert message in payload["error"]
        # The server is still healthy after every bad request.
        async with session.get(f"{base_url}/healthz") as response:
            assert response.status == 200


async def test_capacity_and_loading_answer_503_with_retry_after(bridge_server) -> None:
    base_url, bridge = bridge_server
    offer = {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"}
    async with aiohttp.ClientSession() as session:
        bridge.config.calls.max_concurrent = 0
        async with session.post(f"{base_url}/api/webrtc/offer", json=offer) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
            assert "concurrent" in (await response.json())["error"]
        engines, bridge.engines = bridge.engines, None
        try:
            async with session.get(f"{base_url}/healthz") as response:
                assert response.status == 503
            async with session.post(f"{base_url}/api/webrtc/offer", json=offer) as response:
                assert response.status == 503
                assert "loading" in (await response.json())["error"]
        finally:
            bridge.engines = engines


async def test_widget_is_served_with_cors(bridge_server) -> None:
    base_url, _bridge = bridge_server
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/") as response:
            assert response.status == 200
            assert "widget.js" in await response.text()
        headers = {"Origin": "https://shop.example"}
        async with session.get(f"{base_url}/api/webrtc/config", headers=headers) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert await response.json() == {"iceServers": []}
        async with session.options(f"{base_url}/api/webrtc/offer", headers=headers) as response:
            assert response.status == 204
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
