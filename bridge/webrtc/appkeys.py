"""Typed keys for what the aiohttp application shares with its handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bridge.server import Bridge

BRIDGE: web.AppKey[Bridge] = web.AppKey("bridge")
