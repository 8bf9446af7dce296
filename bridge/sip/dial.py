"""``bridge dial``: place one outbound call through a running bridge's HTTP API and follow it.

The CLI never speaks SIP itself: the running bridge owns the SIP port, the RTP ports, the
speech engines and the destination policy, so a dialled call is exactly like any other.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

FINAL = ("completed", "busy", "no-answer", "failed")
POLL_S = 0.5


def _request(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def dial(
    server: str,
    to: str,
    *,
    dialplan: str | None,
    from_user: str | None,
    wait: float,
    variables: dict[str, str] | None = None,
) -> int:
    """Print the call's status changes; 0 once answered (or completed), 1 if it failed, 2 if
    the bridge refused to place it. ``variables`` go to the call's dialplan."""
    status, body = _request(
        f"{server.rstrip('/')}/api/calls",
        {"to": to, "dialplan": dialplan, "from": from_user, "variables": variables or {}},
    )
    print(json.dumps(body), flush=True)
    if status >= 300:
        return 2
    url = f"{server.rstrip('/')}/api/calls/{body['call_id']}"
    deadline = time.monotonic() + wait
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, state = _request(url)
        if state != last:
            print(json.dumps(state), flush=True)
            last = state
        if state.get("status") in FINAL:
            break
        time.sleep(POLL_S)
    return 0 if last.get("status") in ("answered", "completed") else 1
