"""The dialplans folder: load and check every file, route calls to plans, reload safely.

A server must never run a broken plan, and an edit must never take a line down: at start-up any
invalid file is fatal; afterwards `reload` swaps in changed files only when they check clean, and
keeps the previous version otherwise. Calls hold their `Dialplan` object, so a running call
finishes on the plan it started with.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Literal

from bridge.dialog.check import problems
from bridge.dialog.dialplan import Dialplan, DialplanError
from bridge.typedyaml import YamlError, load_typed

log = logging.getLogger(__name__)

Channel = Literal["webrtc", "sip"]


def check_file(path: Path) -> tuple[Dialplan | None, list[str]]:
    """The plan in ``path`` and its problems as ``file:line: message`` (plan None if unusable)."""
    try:
        plan = load_typed(Dialplan, path)
    except YamlError as exc:
        return None, [str(exc)]
    plan.source = str(path)
    return plan, [f"{path}:{p.line}: {p.message}" for p in problems(plan)]


def load_dialplan(path: Path) -> Dialplan:
    plan, found = check_file(path)
    if found or plan is None:
        raise DialplanError("\n".join(found))
    return plan


def _conflicts(plans: list[Dialplan]) -> list[str]:
    """Two files claiming the same name, or the same WebRTC name or SIP user."""
    found: list[str] = []
    claimed: dict[tuple[str, str], Dialplan] = {}
    for plan in plans:
        keys = [("name", plan.name)]
        keys += [("serves.webrtc", key) for key in plan.serves.webrtc]
        keys += [("serves.sip", key) for key in plan.serves.sip]
        for key in keys:
            other = claimed.setdefault(key, plan)
            if other is not plan:
                line = plan.line_of(key[0].split(".")[0])
                found.append(
                    f"{plan.source}:{line}: {key[0]}: {key[1]!r} is already used by {other.source}"
                )
    return found


def check_directory(directory: Path) -> list[str]:
    """Every problem in every ``*.yaml`` dialplan in ``directory`` (empty: all valid)."""
    if not directory.is_dir():
        return [f"{directory}: not a folder"]
    found: list[str] = []
    plans: list[Dialplan] = []
    for path in sorted(directory.glob("*.yaml")):
        plan, file_problems = check_file(path)
        found += file_problems
        if plan is not None:
            plans.append(plan)
    return found + _conflicts(plans)


class DialplanLibrary:
    """Every dialplan in a folder; raises `DialplanError` at start-up if any is invalid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if not directory.is_dir():
            raise DialplanError(f"{directory}: dialplans folder does not exist")
        found = check_directory(directory)
        if found:
            raise DialplanError("\n".join(found))
        self._stamps = self._scan()
        self._by_file = {path: load_dialplan(path) for path in self._stamps}
        self._index()
        self._reloading = threading.Lock()  # the watcher reloads in a thread, SIGHUP on the loop

    def names(self) -> list[str]:
        return sorted(self._plans)

    def get(self, name: str) -> Dialplan:
        try:
            return self._plans[name]
        except KeyError:
            raise DialplanError(f"unknown dialplan {name!r}") from None

    def find(self, channel: Channel, key: str) -> Dialplan:
        """The plan for a WebRTC name or SIP user: a plan of that name, else the one serving it."""
        plan = self._plans.get(key) or self._serving[channel].get(key)
        if plan is None:
            raise DialplanError(f"unknown dialplan {key!r} (none is named so or serves it)")
        return plan

    def reload(self) -> list[str]:
        """Take in changed, added and removed files; returns the problems of files not taken."""
        with self._reloading:
            return self._reload()

    def _reload(self) -> list[str]:
        stamps = self._scan()
        if stamps == self._stamps:
            return []
        candidate: dict[Path, Dialplan] = {}
        rejected: list[str] = []
        for path, stamp in stamps.items():
            if self._stamps.get(path) == stamp:
                candidate[path] = self._by_file[path]
                continue
            plan, found = check_file(path)
            if plan is not None and not found:
                candidate[path] = plan
                log.info("dialplan %s reloaded from %s", plan.name, path)
            else:
                rejected += found
                if path in self._by_file:
                    candidate[path] = self._by_file[path]  # keep serving the previous version
        conflicts = _conflicts(list(candidate.values()))
        if conflicts:
            return rejected + conflicts  # stamps unchanged: retried once the files are fixed
        self._stamps, self._by_file = stamps, candidate
        self._index()
        return rejected

    async def watch(self, interval_s: float) -> None:
        """Reload every ``interval_s`` seconds, logging each new set of problems once.

        Each reload runs in a worker thread: parsing a changed file takes tens of milliseconds,
        which on this loop would hold up the media of every call it serves."""
        reported: list[str] = []
        while True:
            await asyncio.sleep(interval_s)
            try:
                found = await asyncio.to_thread(self.reload)
            except OSError as exc:
                found = [f"cannot reload dialplans: {exc}"]
            if found and found != reported:
                for problem in found:
                    log.error("dialplan not reloaded: %s", problem)
            reported = found

    def _scan(self) -> dict[Path, tuple[int, int]]:
        stamps = {}
        for path in sorted(self.directory.glob("*.yaml")):
            stat = path.stat()
            stamps[path] = (stat.st_mtime_ns, stat.st_size)
        return stamps

    def _index(self) -> None:
        plans = list(self._by_file.values())
        self._plans = {plan.name: plan for plan in plans}
        self._serving: dict[Channel, dict[str, Dialplan]] = {
            "webrtc": {key: plan for plan in plans for key in plan.serves.webrtc},
            "sip": {key: plan for plan in plans for key in plan.serves.sip},
        }
