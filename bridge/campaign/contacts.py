"""Contact import from CSV text or a JSON list, validated row by row.

Every bad row is reported with its line and reason (missing destination, a value that is neither
a SIP URI nor a phone number, an unknown time zone, a destination outside the allow-list, a
duplicate); the caller decides whether the good rows are kept. Columns other than ``to`` and
``timezone`` become the contact's dialplan variables.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.campaign.calendar import zone
from bridge.campaign.model import Contact, RowProblem
from bridge.sip.uri import SipUri

MAX_CONTACTS = 100_000
_PHONE = re.compile(r"^\+?[0-9][0-9 ().\-/]*$")
_RESERVED = ("to", "timezone")


@dataclass
class ImportRules:
    """How rows become contacts: the zone when a row names none, the template turning a phone
    number into a SIP URI (``sip:{number}@trunk.example.com``; None: numbers are refused), and
    the destination policy (``sip.outbound_targets``)."""

    allows: Callable[[str], bool]
    default_timezone: str = "UTC"
    number_uri: str | None = None


def destination(value: str, number_uri: str | None) -> str:
    """The SIP URI to dial for ``value`` (a SIP URI or a phone number); ValueError says why not."""
    text = value.strip()
    if text.lower().startswith(("sip:", "sips:")):
        try:
            uri = SipUri.parse(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid SIP URI") from None
        if not uri.user or not uri.host:
            raise ValueError(f"{text!r} is not a valid SIP URI (sip:user@host[:port])")
        return str(uri)
    if not _PHONE.match(text):
        raise ValueError(f"{text!r} is neither a SIP URI nor a phone number")
    number = ("+" if text.startswith("+") else "") + "".join(c for c in text if c.isdigit())
    if not 3 <= len(number.lstrip("+")) <= 15:
        raise ValueError(f"{text!r} is not a phone number (3 to 15 digits)")
    if number_uri is None:
        raise ValueError(f"phone number {text!r} needs campaigns.number_uri to be dialled")
    return number_uri.format(number=number)


def parse_csv(text: str, rules: ImportRules) -> tuple[list[Contact], list[RowProblem]]:
    """Contacts from CSV with a header line (line 1); lines count as in the file."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), restkey="\0", strict=True)
    try:
        header = [name.strip().lower() for name in reader.fieldnames or []]
    except csv.Error as exc:
        return [], [RowProblem(1, f"unreadable CSV header: {exc}")]
    if "to" not in header:
        return [], [RowProblem(1, "missing column 'to' (the number or SIP URI to call)")]
    if len(set(header)) != len(header) or "" in header:
        return [], [RowProblem(1, "column names must be unique and not empty")]
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[RowProblem] = []
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(RowProblem(reader.line_num, f"unreadable CSV: {exc}"))
            break
        line = reader.line_num
        if "\0" in row:
            problems.append(RowProblem(line, f"more fields than the {len(header)} columns"))
        elif None in row.values():
            missing = [name for name, value in row.items() if value is None]
            problems.append(RowProblem(line, f"missing value for column {missing[0]!r}"))
        else:
            rows.append((line, row))
    contacts, row_problems = _validate(rows, rules)
    return contacts, sorted(problems + row_problems, key=lambda p: p.line)


def parse_list(items: list[Any], rules: ImportRules) -> tuple[list[Contact], list[RowProblem]]:
    """Contacts from JSON objects ``{"to", "timezone"?, "variables"?: {...}, other: value}``;
    an item's line is its 1-based position."""
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[RowProblem] = []
    for line, item in enumerate(items, 1):
        if not isinstance(item, dict):
            problems.append(RowProblem(line, "a contact must be a JSON object"))
            continue
        flat = {k: v for k, v in item.items() if k != "variables"}
        extra = item.get("variables", {})
        if not isinstance(extra, dict):
            problems.append(RowProblem(line, "'variables' must be an object"))
            continue
        flat.update(extra)
        bad = [k for k, v in flat.items() if not isinstance(v, str | int | float) or v is True]
        if bad:
            problems.append(RowProblem(line, f"{bad[0]!r}: expected a string or number"))
            continue
        rows.append((line, {str(k): str(v) for k, v in flat.items()}))
    contacts, row_problems = _validate(rows, rules)
    return contacts, sorted(problems + row_problems, key=lambda p: p.line)


def _validate(
    rows: Iterable[tuple[int, dict[str, str]]], rules: ImportRules
) -> tuple[list[Contact], list[RowProblem]]:
    contacts: list[Contact] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        value = (row.get("to") or "").strip()
        tz = (row.get("timezone") or "").strip() or rules.default_timezone
        if not value:
            problems.append(RowProblem(line, "'to' is empty"))
            continue
        try:
            to = destination(value, rules.number_uri)
            zone(tz)
        except ValueError as exc:
            problems.append(RowProblem(line, str(exc)))
            continue
        if not rules.allows(to):
            problems.append(RowProblem(line, f"{to} is not allowed by sip.outbound_targets"))
            continue
        key = to.lower()
        if key in seen:
            problems.append(RowProblem(line, f"duplicate of line {seen[key]} ({to})"))
            continue
        seen[key] = line
        variables = {k: v.strip() for k, v in row.items() if k not in _RESERVED}
        contacts.append(Contact(0, "", line, to, tz, variables))
    return contacts, problems
