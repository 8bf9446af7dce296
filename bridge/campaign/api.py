"""HTTP routes for campaigns over :class:`CampaignService`, and the supervisor page.

``POST /api/campaigns`` creates one (201, or 422 with every bad contact row and its line),
``GET /api/campaigns[/{id}]`` lists or shows status, ``POST /api/campaigns/{id}/{action}``
starts, pauses, resumes or stops, ``GET .../contacts`` and ``GET .../export`` give results,
``POST /api/dnc`` adds to the do-not-call list; ``GET /campaigns[/{id}]`` is the page.

Errors are JSON ``{"error"}`` (plus ``problems`` for bad rows) with the service's status: 400
for a body that is not JSON or not an object, 404 for an unknown campaign, 409 for a state
change the campaign's state does not allow, 413 for a body over :data:`MAX_BODY_BYTES`, 503
(with Retry-After) while the campaign store (Redis or the SQLite file) cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from bridge.campaign.model import CampaignError
from bridge.campaign.service import CAMPAIGNS, CampaignService
from bridge.webrtc.appkeys import BRIDGE
from bridge.webrtc.signalling import json_error

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# A contact list is bigger than any other request: 100 000 rows of a few columns fit.
MAX_BODY_BYTES = 16 * 1024 * 1024
ACTIONS = ("start", "pause", "resume", "stop")
# What the page may fetch of a campaign call's record folder (see bridge/media/recorder.py).
RECORD_FILES = {
    "call.json": "application/json",
    "transcript.jsonl": "application/x-ndjson",
    "recording.wav": "audio/wav",
}
STORE_RETRY_AFTER_S = 5
_RECORD_ID = re.compile(r"^[\w.@-]+$")


class Refused(Exception):
    """A request the routes refuse before the service sees it; ``status`` is the HTTP one."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _service(request: web.Request) -> CampaignService:
    return request.app[CAMPAIGNS]


def _campaign_error(exc: CampaignError) -> web.Response:
    if not exc.problems:
        return json_error(exc.status, exc.message)
    log.warning("HTTP %d: %s", exc.status, exc.message)
    body = {"error": exc.message, "problems": [p.as_dict() for p in exc.problems]}
    return web.json_response(body, status=exc.status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; Refused (413, 400) names what is wrong with it."""
    try:
        body = await request.clone(client_max_size=MAX_BODY_BYTES).read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, f"request body larger than {MAX_BODY_BYTES} bytes") from None
    try:  # a big contact list takes a while to parse: not on the event loop
        params = (
            await asyncio.to_thread(json.loads, body) if len(body) > 2**16 else json.loads(body)
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise Refused(400, "body must be a JSON object")
    return params


def _routes_error(handler: Any) -> Any:
    """Turn Refused, CampaignError and an unreachable store into JSON error responses."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as exc:
            return json_error(exc.status, str(exc))
        except CampaignError as exc:
            return _campaign_error(exc)
        except (RedisError, sqlite3.OperationalError) as exc:
            log.error("campaign store unavailable: %s", exc)
            message = f"campaign store unavailable ({type(exc).__name__}); try again shortly"
            return json_error(503, message, **{"Retry-After": str(STORE_RETRY_AFTER_S)})

    return wrapped


@_routes_error
async def create(request: web.Request) -> web.Response:
    params = await _json_body(request)
    keep = params.get("keep_good_rows", False)
    if not isinstance(keep, bool):
        raise Refused(400, "field 'keep_good_rows' must be true or false")
    spec = {k: v for k, v in params.items() if k not in ("csv", "contacts", "keep_good_rows")}
    campaign, report = await _service(request).create(
        spec, params.get("csv"), params.get("contacts"), keep
    )
    status = await _service(request).status(campaign.id)
    return web.json_response({"campaign": status, "import": report.as_dict()}, status=201)


@_routes_error
async def list_campaigns(request: web.Request) -> web.Response:
    return web.json_response({"campaigns": await _service(request).list()})


@_routes_error
async def status(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).status(request.match_info["id"]))


@_routes_error
async def change(request: web.Request) -> web.Response:
    action = request.path.rsplit("/", 1)[1]  # one of ACTIONS (the routes)
    method = getattr(_service(request), action)
    return web.json_response(await method(request.match_info["id"]))


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise Refused(400, f"query parameter {name!r} must be a whole number, got {text!r}")
    return int(text)


@_routes_error
async def contacts(request: web.Request) -> web.Response:
    """Contact rows in import order; ``offset``/``limit`` page through a long list."""
    offset = _query_int(request, "offset", 0)
    limit = _query_int(request, "limit", 0)
    rows = await _service(request).contacts(request.match_info["id"])
    page = rows[offset : offset + limit] if limit else rows[offset:]
    return web.json_response({"total": len(rows), "offset": offset, "contacts": page})


@_routes_error
async def export(request: web.Request) -> web.Response:
    campaign_id, fmt = request.match_info["id"], request.query.get("format", "csv")
    text = await _service(request).export(campaign_id, fmt)
    return web.Response(
        text=text,
        content_type="text/csv" if fmt == "csv" else "application/json",
        headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}.{fmt}"'},
    )


@_routes_error
async def add_dnc(request: web.Request) -> web.Response:
    params = await _json_body(request)
    added = await _service(request).add_dnc(params.get("numbers"))  # type: ignore[arg-type]
    return web.json_response({"added": added})


@_routes_error
async def record_file(request: web.Request) -> web.StreamResponse:
    """One file of a campaign call's record; only records of that campaign's attempts."""
    campaign_id, record_id = request.match_info["id"], request.match_info["record_id"]
    name = request.match_info["name"]
    if name not in RECORD_FILES or not _RECORD_ID.match(record_id):
        raise Refused(404, "no such record file")
    rows = await _service(request).contacts(campaign_id)
    if not any(record_id in row["record_ids"] for row in rows):
        raise Refused(404, f"campaign {campaign_id!r} has no call record {record_id!r}")
    path = await asyncio.to_thread(
        _find_record, Path(request.app[BRIDGE].config.records.dir), record_id, name
    )
    if path is None:
        raise Refused(404, f"call record {record_id!r} has no {name}")
    return web.FileResponse(path, headers={"Content-Type": RECORD_FILES[name]})


def _find_record(records: Path, record_id: str, name: str) -> Path | None:
    """Folders are "<start time>Z-<call id>"; a record id may also be the folder's name."""
    folders = [records / record_id, *sorted(records.glob(f"*Z-{record_id}"))]
    return next((f / name for f in folders if (f / name).is_file()), None)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "campaign.html")


def add_routes(app: web.Application, service: CampaignService) -> None:
    app[CAMPAIGNS] = service
    app.router.add_post("/api/campaigns", create)
    app.router.add_get("/api/campaigns", list_campaigns)
    app.router.add_get("/api/campaigns/{id}", status)
    for action in ACTIONS:
        app.router.add_post(f"/api/campaigns/{{id}}/{action}", change)
    app.router.add_get("/api/campaigns/{id}/contacts", contacts)
    app.router.add_get("/api/campaigns/{id}/export", export)
    app.router.add_get("/api/campaigns/{id}/records/{record_id}/{name}", record_file)
    app.router.add_post("/api/dnc", add_dnc)
    app.router.add_get("/campaigns", page)
    app.router.add_static("/campaigns/static/", STATIC_DIR)
    app.router.add_get("/campaigns/{id}", page)
