"""``bridge campaign ...``: create and steer campaigns of a running bridge over its HTTP API.

Like ``bridge dial``, the command never dials itself: the bridge owns the dialer, the store and
the destination policy. Exit status: 0 done, 1 the bridge refused (bad rows, wrong state, unknown
campaign), 2 the command line itself is wrong or the bridge cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bridge.campaign.model import OUTCOMES

BAR_WIDTH = 30
FINISHED = ("completed", "stopped")
COUNT_ORDER = ("pending", "in-progress", *OUTCOMES)


class UsageError(Exception):
    """A command-line value the bridge need not see to refuse."""


def request(method: str, url: str, body: object = None) -> tuple[int, bytes]:
    """One HTTP exchange; the status and body, error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * done / total) if total else 0
    percent = 100 * done // total if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {percent:3d}%"


def describe(status: dict[str, Any]) -> str:
    """Two lines: the campaign and its progress bar, then its counts by outcome."""
    counts = status.get("counts", {})
    head = (
        f"{status['id']}  {status['name']}  {status['state']}  "
        f"{progress_bar(status['done'], status['total'])}"
    )
    tally = "  ".join(f"{key} {counts.get(key, 0)}" for key in COUNT_ORDER)
    return f"{head}\n  {tally}"


def rules_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the rules given on the command line; the bridge fills in its defaults."""
    rules: dict[str, Any] = {}
    if args.max_concurrent is not None:
        rules["max_concurrent"] = args.max_concurrent
    if args.cps is not None:
        rules["calls_per_second"] = args.cps
    if args.hours:
        rules["calling_hours"] = list(args.hours)
    if args.max_attempts is not None:
        rules["max_attempts"] = args.max_attempts
    if args.retry:
        delays: dict[str, float] = {}
        for item in args.retry:
            outcome, _, seconds = item.partition("=")
            try:
                delays[outcome] = float(seconds)
            except ValueError:
                raise UsageError(f"--retry {item!r}: expected OUTCOME=SECONDS") from None
        rules["retry_delays_s"] = delays
    return rules


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, "dialplan": args.dialplan}
    if args.caller_id is not None:
        body["caller_id"] = args.caller_id
    if args.timezone is not None:
        body["timezone"] = args.timezone
    rules = rules_from_args(args)
    if rules:
        body["rules"] = rules
    try:
        body["csv"] = Path(args.csv).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--csv {args.csv}: {exc}") from None
    body["keep_good_rows"] = args.keep_good_rows
    return body


class Commands:
    """The subcommands against one bridge; each returns the exit status."""

    def __init__(self, server: str) -> None:
        self.api = f"{server.rstrip('/')}/api"

    def _json(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        status, raw = request(method, self.api + path, body)
        return status, _decode(status, raw)

    @staticmethod
    def _refused(status: int, body: dict[str, Any]) -> int:
        print(f"error ({status}): {body.get('error', 'request refused')}", file=sys.stderr)
        return 1

    def create(self, args: argparse.Namespace) -> int:
        status, body = self._json("POST", "/campaigns", create_body(args))
        problems = body.get("problems") or body.get("import", {}).get("problems", [])
        for problem in problems:  # file:line: reason, as an editor jumps to it
            print(f"{args.csv}:{problem['line']}: {problem['reason']}", file=sys.stderr)
        if status != 201:
            return self._refused(status, body)
        skipped = f", {len(problems)} rows skipped" if problems else ""
        print(f"created: {body['import']['accepted']} contacts{skipped}", file=sys.stderr)
        print(body["campaign"]["id"])  # alone on stdout, for scripts
        return 0

    def change(self, action: str, campaign_id: str) -> int:
        status, body = self._json("POST", f"/campaigns/{_quote(campaign_id)}/{action}")
        if status != 200:
            return self._refused(status, body)
        print(describe(body))
        return 0

    def status(self, campaign_id: str | None, watch: bool, interval: float) -> int:
        if campaign_id is None:
            status, body = self._json("GET", "/campaigns")
            if status != 200:
                return self._refused(status, body)
            for campaign in body["campaigns"]:
                print(describe(campaign))
            return 0
        shown = ""
        while True:
            status, body = self._json("GET", f"/campaigns/{_quote(campaign_id)}")
            if status != 200:
                return self._refused(status, body)
            text = describe(body)
            if text != shown:  # with --watch, a new block only when something moved
                print(text, flush=True)
                shown = text
            if not watch or body["state"] in FINISHED:
                return 0
            time.sleep(interval)

    def export(self, campaign_id: str, fmt: str, output: Path | None) -> int:
        url = f"{self.api}/campaigns/{_quote(campaign_id)}/export?format={fmt}"
        status, raw = request("GET", url)
        if status != 200:
            return self._refused(status, _decode(status, raw))
        if output is None:
            sys.stdout.write(raw.decode())
            return 0
        try:
            output.write_bytes(raw)
        except OSError as exc:
            raise UsageError(f"-o {output}: {exc}") from None
        print(f"wrote {output}", file=sys.stderr)
        return 0


def _quote(campaign_id: str) -> str:
    return urllib.parse.quote(campaign_id, safe="")


def _decode(status: int, raw: bytes) -> dict[str, Any]:
    """A JSON answer; anything else (a proxy's HTML page) becomes an error naming the status."""
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        return body
    return {"error": f"HTTP {status}: {raw[:200].decode(errors='replace')}"}


def run(server: str, args: argparse.Namespace) -> int:
    commands = Commands(server)
    try:
        if args.action == "create":
            return commands.create(args)
        if args.action == "status":
            if args.interval <= 0:
                raise UsageError(f"--interval {args.interval}: must be more than 0")
            return commands.status(args.id, args.watch, args.interval)
        if args.action == "export":
            return commands.export(args.id, args.format, args.output)
        return commands.change(args.action, args.id)
    except UsageError as exc:
        print(f"bridge campaign: {exc}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"bridge campaign: cannot reach {server}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``campaign`` subcommands, each with ``--server`` and ``--config``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="bridge HTTP base URL (default: from http.host/port)")
    common.add_argument("--config", type=Path, default=None, help="YAML config file")
    actions = parser.add_subparsers(dest="action", required=True)

    def add(name: str, summary: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=summary, parents=[common])  # type: ignore[no-any-return]

    create = add("create", "create a campaign from a CSV contact list")
    create.add_argument("name", help="the campaign's name")
    create.add_argument("--csv", required=True, help="contacts: a 'to' column, others variables")
    create.add_argument("--dialplan", required=True, help="dialplan every call runs")
    create.add_argument("--caller-id", help="From user of the calls (default: sip.outbound_from)")
    create.add_argument("--timezone", help="zone of contacts without a timezone column")
    create.add_argument("--max-concurrent", type=int, help="calls at once, all instances")
    create.add_argument("--cps", type=float, help="calls started per second")
    create.add_argument(
        "--hours", action="append", help="calling window, e.g. 'mon-fri 09:00-18:00' (repeat)"
    )
    create.add_argument(
        "--retry",
        action="append",
        metavar="OUTCOME=SECONDS",
        help="retry delay per outcome, e.g. busy=600 (repeat; outcomes not named: no retry)",
    )
    create.add_argument("--max-attempts", type=int, help="attempts per contact")
    create.add_argument(
        "--keep-good-rows", action="store_true", help="import the good rows despite bad ones"
    )
    for action in ("start", "pause", "resume", "stop"):
        add(action, f"{action} a campaign").add_argument("id")
    status = add("status", "progress and counts (all campaigns: no ID)")
    status.add_argument("id", nargs="?")
    status.add_argument("--watch", action="store_true", help="follow until it ends")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between looks")
    export = add("export", "results per contact")
    export.add_argument("id")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
