"""Prompt templates (``{{ order.status }}``, ``{{ order_number | digits }}``) and SSML.

Prompts are filled from call variables and webhook replies. The speech engines take plain text,
so SSML prompts are reduced to what they would say: ``<say-as interpret-as="digits">`` spells
digits out, ``<break>`` becomes a pause (a comma), other tags keep their text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any
from xml.sax.saxutils import escape

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*(?:\|\s*(\w+)\s*)?\}\}")

FILTERS: dict[str, Callable[[str], str]] = {
    "digits": lambda value: " ".join(ch for ch in value if not ch.isspace()),
    "upper": str.upper,
    "lower": str.lower,
}


def lookup(variables: Mapping[str, Any], dotted: str) -> Any:
    """``a.b.c`` in nested mappings (webhook JSON); None when any part is missing."""
    value: Any = variables
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def placeholders(template: str) -> list[tuple[str, str | None]]:
    """(variable, filter) for each placeholder, for checks and for prompt warming."""
    return [(m.group(1), m.group(2)) for m in _PLACEHOLDER.finditer(template)]


def render(template: str, variables: Mapping[str, Any], encode: Callable[[str], str] = str) -> str:
    """Fill placeholders; a missing variable renders empty. ``encode`` protects each value."""

    def fill(match: re.Match[str]) -> str:
        value = lookup(variables, match.group(1))
        text = "" if value is None else _text(value)
        if match.group(2):
            text = FILTERS[match.group(2)](text)
        return encode(text)

    return _PLACEHOLDER.sub(fill, template)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_ssml(text: str) -> bool:
    return text.lstrip().startswith("<speak")


def render_prompt(template: str, variables: Mapping[str, Any]) -> str:
    """The plain text to speak for a prompt template (SSML or not)."""
    if not is_ssml(template):
        return " ".join(render(template, variables).split())
    return ssml_to_text(render(template, variables, escape))


def ssml_problem(text: str) -> str | None:
    """Why an SSML prompt cannot be used, or None."""
    try:
        ET.fromstring(_PLACEHOLDER.sub("x", text))
    except ET.ParseError as exc:
        return f"invalid SSML: {exc}"
    return None


def ssml_to_text(ssml: str) -> str:
    parts: list[str] = []
    _flatten(ET.fromstring(ssml), parts)
    return re.sub(r"\s+([,.!?;:])", r"\1", " ".join(" ".join(parts).split()))


def _flatten(element: ET.Element, parts: list[str]) -> None:
    tag = element.tag.rsplit("}", 1)[-1]
    if tag == "say-as" and element.get("interpret-as") in ("digits", "characters", "spell-out"):
        parts.append(" ".join(ch for ch in element.text or "" if not ch.isspace()))
    elif tag == "break":
        parts.append(",")
    elif tag == "sub" and element.get("alias"):
        parts.append(element.get("alias", ""))
    else:
        parts.append(element.text or "")
        for child in element:
            _flatten(child, parts)
            parts.append(child.tail or "")
