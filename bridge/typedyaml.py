"""Load hand-written YAML into typed dataclasses, with errors that point at file:line and key.

Config files and dialplans are edited by people, so a wrong type or a typo'd key must be reported
as ``config/default.yaml:7: http.port: expected an integer, got 'eighty'`` rather than surfacing
later as a crash deep inside a call.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class YamlError(ValueError):
    """A problem in a YAML file, already phrased as ``file:line: key: message``."""


@dataclasses.dataclass
class Located:
    """Base for dataclasses that remember their lines, for checks made after loading.

    Cross-references (a ``goto`` naming a missing step) can only be checked once the whole file
    is loaded; ``lines`` lets those errors still point at the line: ``""`` is where the mapping
    starts, every other entry is the line of that key.
    """

    lines: dict[str, int] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def line_of(self, key: str = "") -> int:
        return self.lines.get(key, self.lines.get("", 0))


def load_typed(cls: type[T], path: Path) -> T:
    """Read ``path`` into an instance of the dataclass ``cls`` (an empty file gives defaults)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise YamlError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise YamlError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if node is None:
        return cls()
    return _build(cls, node, str(path), "")


def _build(cls: type[T], node: yaml.Node, source: str, prefix: str) -> T:
    if not isinstance(node, yaml.MappingNode):
        raise _error(source, node, prefix.rstrip(".") or "(top level)", "expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        dotted = f"{prefix}{key}"
        if key not in known:
            choices = ", ".join(sorted(known))
            raise _error(source, key_node, dotted, f"unknown key (expected one of: {choices})")
        values[key] = _convert(hints[key], value_node, source, dotted)
    where = prefix.rstrip(".") or "(top level)"
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _error(source, node, where, f"missing required key {missing[0]!r}")
    instance = cls(**values)
    if isinstance(instance, Located):
        instance.lines = {"": node.start_mark.line + 1} | {
            str(k.value): k.start_mark.line + 1 for k, _ in node.value
        }
    validate = getattr(instance, "validate", None)
    if validate is not None:
        problem = validate()
        if problem:
            raise _error(source, node, where, problem)
    return instance


def _convert(hint: Any, node: yaml.Node, source: str, dotted: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, node, source, dotted + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, node, source, dotted)
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            raise _error(source, node, dotted, "expected a list")
        return [_convert(args[0], item, source, dotted) for item in node.value]
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise _error(source, node, dotted, "expected a mapping")
        entries = {}
        for k, v in node.value:
            entry = entries[str(k.value)] = _convert(args[1], v, source, f"{dotted}.{k.value}")
            if isinstance(entry, Located):
                entry.lines[""] = k.start_mark.line + 1  # an entry is where it is named
        return entries
    value = _scalar(node, source, dotted)
    if origin is Literal:
        if value not in args:
            raise _error(source, node, dotted, f"expected one of {list(args)}, got {value!r}")
        return value
    checks: dict[Any, tuple[type | tuple[type, ...], str]] = {
        bool: (bool, "true/false"),
        int: (int, "an integer"),
        float: ((int, float), "a number"),
        str: ((str, int, float), "a string"),
    }
    if hint not in checks:
        raise TypeError(f"unsupported YAML field type for {dotted}: {hint}")
    accepted, described = checks[hint]
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise _error(source, node, dotted, f"expected {described}, got {value!r}")
    return hint(value)


def _scalar(node: yaml.Node, source: str, dotted: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise _error(source, node, dotted, "expected a single value")
    if node.tag.endswith(":null"):
        return None  # an empty value (which yaml cannot round-trip on its own)
    return yaml.safe_load(yaml.serialize(node))


def _error(source: str, node: yaml.Node, dotted: str, message: str) -> YamlError:
    return YamlError(f"{source}:{node.start_mark.line + 1}: {dotted}: {message}")
