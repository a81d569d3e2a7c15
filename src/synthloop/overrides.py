"""``--set key.path=value``: changing a config from the command line, checked like the file.

An override is applied to the parsed YAML document before it is validated, so a value given on
the command line meets exactly the rules a value in the file meets (unknown keys, types, bounds,
the family's own checks), and the resolved config a run writes holds it. The value is read with
the same strict YAML loader as a file (:func:`synthloop.yamlio.load_yaml`): ``3``, ``1e4``,
``true``, ``auto``, ``[1, 2]`` and ``{kind: constant, n0: 5}`` mean what they mean in the file, and
an empty value is ``null`` (which drops an optional section).

The path walks mappings by key (a missing section is created, for validation to judge) and lists
by position (``task.theta0.1=2.5``). A key holding dots, like the schedule name ``exponential-0.5``,
is found when the joined parts name an existing key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from synthloop.yamlio import ConfigError, load_yaml, shown

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Override:
    """One ``--set``: the dotted key path and its value, already parsed as YAML."""

    keys: tuple[str, ...]
    value: Any
    text: str  # as the user wrote it, for messages


def parse_override(text: str) -> Override:
    """``key.path=value`` -> :class:`Override`; a one-line :class:`ConfigError` naming it if malformed.

    >>> parse_override("budget.total=2e3")
    Override(keys=('budget', 'total'), value=2000.0, text='budget.total=2e3')
    >>> parse_override("budget.total")
    Traceback (most recent call last):
    ...
    synthloop.yamlio.ConfigError: --set 'budget.total': expected KEY.PATH=VALUE (for example budget.total=5000)
    """
    key, equals, value = text.partition("=")
    if not equals:
        raise ConfigError(f"--set {shown(text)}: expected KEY.PATH=VALUE (for example budget.total=5000)")
    parts = tuple(key.strip().split("."))
    if not all(_PART.match(p) for p in parts):
        raise ConfigError(f"--set {shown(text)}: {shown(key)} is not a key path (keys of letters, digits, "
                          "'_' and '-', joined by dots)")
    return Override(parts, load_yaml(value, source=f"--set {'.'.join(parts)}"), text)


def apply_overrides(data: Any, overrides: Sequence[Override]) -> Any:
    """``data`` (a parsed config document) with each override applied in turn; ``data`` is not changed."""
    if not overrides:
        return data
    if not isinstance(data, dict):
        return data  # validation says what is wrong with the document itself
    result = _copy(data)
    for override in overrides:
        _apply(result, override)
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _apply(root: dict[str, Any], override: Override) -> None:
    node: Any = root
    keys = list(override.keys)
    walked: list[str] = []
    while True:
        key, keys = _next_key(node, keys)
        walked.append(key)
        where = ".".join(walked)
        if isinstance(node, list):
            index = _index(node, key, where, override)
            if not keys:
                node[index] = override.value
                return
            node = node[index]
            continue
        if not keys:
            node[key] = override.value
            return
        if node.get(key) is None:
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict | list):
            raise ConfigError(f"--set {shown(override.text)}: {where} is {shown(child)}, not a section; "
                              f"set {where} itself")
        node = child


def _next_key(node: Any, keys: list[str]) -> tuple[str, list[str]]:
    """The longest run of parts that names an existing key (names may hold dots), else one part."""
    if isinstance(node, dict):
        for end in range(len(keys), 1, -1):
            joined = ".".join(keys[:end])
            if joined in node:
                return joined, keys[end:]
    return keys[0], keys[1:]


def _index(node: list[Any], key: str, where: str, override: Override) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"--set {shown(override.text)}: {where.rpartition('.')[0]} is a list of {len(node)}; "
                          f"a position is 0..{len(node) - 1}, or set the whole list (KEY=[a, b])")
    return int(key)
