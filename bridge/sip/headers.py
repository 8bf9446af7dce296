"""SIP header names, lists and parameters (RFC 3261 §7.3, §20).

Names are case-insensitive and have compact forms, and several headers may carry a
comma-separated list; commas inside quotes or ``<...>`` are not separators. Everything here
is normalised once, at parse time, so the rest of the stack can look headers up by their
canonical name and see one value per entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
}
# Names whose canonical spelling is not plain Title-Case.
_SPECIAL_CASE = {
    name.lower(): name
    for name in (
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "MIME-Version",
        "RAck",
        "RSeq",
        "SIP-ETag",
        "Min-SE",
    )
}
# Headers defined as comma-separated lists; others (auth, Date, User-Agent...) contain commas.
LIST_HEADERS = frozenset(
    {
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    }
)
TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


_VIA = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([\w.!%*+`'~-]+)\s+(\S.*)", re.ASCII | re.DOTALL)


def is_token(text: str) -> bool:
    return bool(text) and all(c in TOKEN_CHARS for c in text)


def canonical_name(name: str) -> str:
    """``v`` → ``Via``, ``call-id`` → ``Call-ID``, ``content-TYPE`` → ``Content-Type``."""
    lower = name.strip().lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return _SPECIAL_CASE.get(lower) or "-".join(p.capitalize() for p in lower.split("-"))


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split on ``separator`` except inside ``"..."`` (with backslash escapes) or ``<...>``."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">" and depth:
            depth -= 1
        elif not quoted and not depth and char == separator:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


Params = tuple[tuple[str, str | None], ...]


def parse_params(text: str) -> Params:
    """``a=1;lr;b="x;y"`` → ``(("a", "1"), ("lr", None), ("b", '"x;y"'))``."""
    params: list[tuple[str, str | None]] = []
    for part in split_outside_quotes(text, ";"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        params.append((name.strip(), value.strip() if sep else None))
    return tuple(params)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    return next((v for k, v in params if k.lower() == name.lower()), None)


def set_param(params: Params, name: str, value: str | None) -> Params:
    kept = tuple((k, v) for k, v in params if k.lower() != name.lower())
    return (*kept, (name, value))


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets); raise ``ValueError`` on a bad host or port."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text.partition("]")
        host += sep
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port_text = text.partition(":")
    if not host or any(c in host for c in ' \t<>"@,;'):
        raise ValueError(f"bad host: {text!r}")
    if not port_text:
        return host.lower(), None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port: {text!r}")
    return host.lower(), int(port_text)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via entry: where the response goes back to, and the transaction branch."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA.fullmatch(text)
        if not match:
            raise ValueError(f"bad Via: {text!r}")
        sent_by, _, param_text = match[2].partition(";")
        host, port = split_hostport(sent_by)
        return cls(match[1].upper(), host, port, parse_params(param_text))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    @property
    def sent_by(self) -> tuple[str, int]:
        return self.host, self.port or 5060


def parse_cseq(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    valid_number = number.isascii() and number.isdigit() and len(number) <= 10
    valid_number = valid_number and int(number) < 2**31
    if not valid_number or not is_token(method):
        raise ValueError(f"bad CSeq: {value!r}")
    return int(number), method


class Headers:
    """Ordered header entries with case-insensitive, compact-form-aware lookup."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items or ():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append; list headers are split into one entry per element."""
        name = canonical_name(name)
        values = split_outside_quotes(value, ",") if name in LIST_HEADERS else [value.strip()]
        self._items.extend((name, v) for v in values if v or len(values) == 1)

    def get(self, name: str, default: str | None = None) -> str | None:
        wanted = canonical_name(name)
        return next((v for n, v in self._items if n == wanted), default)

    def get_all(self, name: str) -> list[str]:
        wanted = canonical_name(name)
        return [v for n, v in self._items if n == wanted]

    def set(self, name: str, value: str) -> None:
        """Replace every entry of ``name`` by one value, keeping the first entry's position."""
        wanted = canonical_name(name)
        index = next((i for i, (n, _) in enumerate(self._items) if n == wanted), len(self._items))
        self.remove(wanted)
        self._items.insert(index, (wanted, value))

    def remove(self, name: str) -> None:
        wanted = canonical_name(name)
        self._items = [(n, v) for n, v in self._items if n != wanted]

    def copy(self) -> Headers:
        clone = Headers()
        clone._items = list(self._items)
        return clone

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"
