"""Webhooks: the HTTP calls a dialplan makes (order lookups, bookings), with a hard timeout.

Building the request is pure (templates filled from call variables, URL parts encoded); only
`perform` touches the network. Every failure — timeout, refused connection, non-2xx status — is a
`WebhookResult` with ``ok=False``, never an exception, so the flow can take its failure branch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.dialog.dialplan import Webhook
from bridge.dialog.template import render


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    method: str
    url: str
    timeout_s: float
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class WebhookResult:
    ok: bool
    status: int = 0
    data: Any = None  # the JSON reply (or its text when it is not JSON)
    error: str = ""


def build_request(hook: Webhook, variables: Mapping[str, Any]) -> WebhookRequest:
    return WebhookRequest(
        method=hook.method,
        url=render(hook.url, variables, lambda value: quote(value, safe="")),
        timeout_s=hook.timeout_s,
        headers={name: render(value, variables) for name, value in hook.headers.items()},
        body=None
        if hook.body is None
        else {name: render(value, variables) for name, value in hook.body.items()},
    )


async def perform(session: aiohttp.ClientSession, request: WebhookRequest) -> WebhookResult:
    try:
        async with (
            asyncio.timeout(request.timeout_s),
            session.request(
                request.method, request.url, headers=request.headers, json=request.body
            ) as response,
        ):
            text = await response.text()
            status = response.status
    except TimeoutError:
        return WebhookResult(False, error=f"no reply within {request.timeout_s:g} s")
    except (aiohttp.ClientError, ValueError) as exc:
        return WebhookResult(False, error=f"{type(exc).__name__}: {exc}")
    if not 200 <= status < 300:
        return WebhookResult(False, status, text, f"HTTP {status}")
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        data = text
    return WebhookResult(True, status, data)
