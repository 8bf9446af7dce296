"""HTTP routes for outbound SIP calls: ``POST /api/calls`` places one, ``GET`` follows it;
``GET /api/sip/registrations`` shows each trunk registration's state, ``GET /api/sip/media-workers``
each media worker's.

Errors are JSON with a 4xx/5xx status, as for the WebRTC routes; a destination outside
``sip.outbound_targets`` is a 403 whatever else the request says.
"""

from __future__ import annotations

import json

from aiohttp import web

from bridge.dialog.dialplan import DialplanError
from bridge.sip.front import DialRefused, SipFront
from bridge.webrtc.signalling import json_error

SIP_FRONT = web.AppKey("sip_front", SipFront)


async def place_call(request: web.Request) -> web.Response:
    front = request.app[SIP_FRONT]
    try:
        params = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return json_error(400, f"body is not valid JSON: {exc}")
    problem = _call_problem(params)
    if problem:
        return json_error(400, problem)
    try:
        out = front.dial(
            params["to"],
            from_user=params.get("from"),
            dialplan=params.get("dialplan"),
            variables=params.get("variables"),
        )
    except DialRefused as exc:
        headers = {"Retry-After": "10"} if exc.status == 503 else {}
        return json_error(exc.status, str(exc), **headers)
    except DialplanError as exc:
        return json_error(404, str(exc))
    return web.json_response({"call_id": out.id, "status": out.status}, status=201)


async def call_status(request: web.Request) -> web.Response:
    out = request.app[SIP_FRONT].outbound_call(request.match_info["call_id"])
    if out is None:
        return json_error(404, "no such call")
    return web.json_response(out.as_dict())


async def registration_status(request: web.Request) -> web.Response:
    return web.json_response({"registrations": request.app[SIP_FRONT].registration_status()})


async def media_worker_status(request: web.Request) -> web.Response:
    return web.json_response({"media_workers": request.app[SIP_FRONT].media_worker_status()})


def _call_problem(params: object) -> str | None:
    if not isinstance(params, dict):
        return "body must be a JSON object"
    if not isinstance(params.get("to"), str) or not params["to"].startswith(("sip:", "sips:")):
        return "field 'to' must be a SIP URI (sip:user@host[:port])"
    for name in ("from", "dialplan"):
        if params.get(name) is not None and not isinstance(params[name], str):
            return f"field {name!r} must be a string"
    variables = params.get("variables")
    if variables is not None and (
        not isinstance(variables, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())
    ):
        return "field 'variables' must be an object of strings"
    return None


def add_routes(app: web.Application, front: SipFront) -> None:
    app[SIP_FRONT] = front
    app.router.add_post("/api/calls", place_call)
    app.router.add_get("/api/calls/{call_id}", call_status)
    app.router.add_get("/api/sip/registrations", registration_status)
    app.router.add_get("/api/sip/media-workers", media_worker_status)
