"""Reading YAML configs without trusting them: a bad file is one short line, never a hang.

A config file is read only if it is a regular file of at most ``MAX_BYTES`` (a FIFO, device or
folder is refused before it is opened, and it is opened non-blocking in case it was swapped in
between), decoded as UTF-8, and parsed with a ``SafeLoader`` that

- rejects duplicate keys at any level (PyYAML keeps the last one silently),
- bounds what aliases expand to (``MAX_NODES`` values, ``MAX_DEPTH`` levels): an anchor bomb is
  refused before anything walks the expanded value,
- reads ``1e9`` as a float, as YAML 1.2 does (YAML 1.1 wants ``1.0e+9`` and reads ``1e9`` as a
  string), and leaves dates as strings (``name: 2024-01-01`` is a name, not a date).

Each problem a :class:`ConfigError` names is one line of at most ``MAX_MESSAGE`` characters
(validation lists every problem it found, one a line, at most ``MAX_PROBLEMS``), and echoed values
are cut to ``MAX_SHOWN`` (:func:`shown`).
"""

from __future__ import annotations

import os
import re
import reprlib
import stat
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.scanner import ScannerError

MAX_BYTES = 1 << 20  # a config is a page or two; a megabyte is already generous
MAX_NODES = 100_000  # values after alias expansion (scalars, lists and mappings)
MAX_DEPTH = 64  # nesting levels
MAX_INT_DIGITS = 50  # Python refuses to parse ints past 4,300 digits; no field wants 50
MAX_SHOWN = 80  # characters of an echoed value
MAX_MESSAGE = 250  # characters of a whole message (the CLI adds a short prefix)


MAX_PROBLEMS = 20  # problems a ConfigError lists; past these, one line says how many more


class ConfigError(ValueError):
    """A config that cannot run: one line per problem, each naming the field or the file.

    Most errors are one problem. Validation gives every problem it found (``ConfigError(*lines)``),
    at most ``MAX_PROBLEMS`` of them and then ``... and N more``; each line is cut to
    ``MAX_MESSAGE`` characters with its control characters escaped, so a line is never two.
    """

    def __init__(self, message: str, *more: str) -> None:
        lines = [one_line(text, MAX_MESSAGE) for text in (message, *more)[:MAX_PROBLEMS]]
        if len(more) + 1 > MAX_PROBLEMS:
            lines.append(f"... and {len(more) + 1 - MAX_PROBLEMS} more")
        self.problems: tuple[str, ...] = tuple(lines)
        super().__init__("\n".join(lines))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str, limit: int) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters.

    >>> one_line("a\\nb", 10)
    'a\\\\nb'
    >>> one_line("x" * 20, 10)
    'xxxxxxx...'
    """
    flat = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text[: 4 * limit])
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _ShortRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict = 2, 5, 5, 4
        self.maxstring, self.maxother = MAX_SHOWN, MAX_SHOWN

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # repr itself refuses huge ints, and nobody reads 60 digits
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_REPR = _ShortRepr()


def shown(value: Any) -> str:
    """A repr of ``value`` of at most ``MAX_SHOWN`` characters, cheap however big the value.

    >>> len(shown("x" * 10**6))
    80
    >>> shown([1.5, float("nan")])
    '[1.5, nan]'
    """
    return one_line(_REPR.repr(value), MAX_SHOWN)


# -- reading the file --------------------------------------------------------------------------


def shown_path(path: Path | str) -> str:
    """``path`` for a message: cut in the middle past 100 characters, so the reason still fits."""
    text = str(path)
    return text if len(text) <= 100 else f"{text[:40]}...{text[-57:]}"


def read_config_text(path: Path) -> str:
    """The text of the config file at ``path``, or :class:`ConfigError` naming the file."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read config {shown_path(path)}: {_reason(error)}") from None
    _require_regular(path, info)
    try:
        data = _read_regular(path)
    except OSError as error:
        raise ConfigError(f"cannot read config {shown_path(path)}: {_reason(error)}") from None
    return decode_utf8(data, source=shown_path(path))


def _require_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"cannot read config {shown_path(path)}: not a regular file "
                          f"({_file_kind(info.st_mode)})")
    if info.st_size > MAX_BYTES:
        raise ConfigError(f"cannot read config {shown_path(path)}: {info.st_size} bytes; a config is at most "
                          f"{MAX_BYTES}")


def _read_regular(path: Path) -> bytes:
    # O_NONBLOCK: if a FIFO replaced the file since the stat, opening it must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        _require_regular(path, os.fstat(file.fileno()))
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError(f"cannot read config {shown_path(path)}: more than {MAX_BYTES} bytes")
    return data


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def decode_utf8(data: bytes, *, source: str) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte-order mark is dropped); a one-line error otherwise."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{source}: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    if b"\x00" in data[:MAX_BYTES]:
        raise ConfigError(f"{source}: a binary file (it holds NUL bytes), not a YAML config")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{source}: not UTF-8 text (byte 0x{data[error.start]:02x} at line {line}); "
                          "save it as UTF-8") from None


# -- parsing -----------------------------------------------------------------------------------

TIMESTAMP = "tag:yaml.org,2002:timestamp"
FLOAT = "tag:yaml.org,2002:float"
# YAML 1.2 floats PyYAML's 1.1 rules miss: an exponent without a dot or sign (1e9, 2E-3, 5e+10).
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class SafeConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and over-long integers (see the module)."""

    yaml_implicit_resolvers: dict[Any, Any] = {  # noqa: RUF012 (PyYAML's own class attribute)
        first: [(tag, regexp) for tag, regexp in resolvers if tag != TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Each open '[' or '{' makes PyYAML's scanner rescan every open one: refuse deep ones early.
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        _refuse_duplicates(self, node)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = str(node.value)
        if sum(c.isdigit() for c in text) > MAX_INT_DIGITS:
            raise ConstructorError(None, None, f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})",
                                   node.start_mark)
        return super().construct_yaml_int(node)


SafeConfigLoader.add_implicit_resolver(FLOAT, _FLOAT_12, list("-+0123456789"))
SafeConfigLoader.add_constructor("tag:yaml.org,2002:int", SafeConfigLoader.construct_yaml_int)


def _refuse_duplicates(loader: SafeConfigLoader, node: MappingNode) -> None:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` then explicit keys is how YAML overrides merged ones
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first_line.get(key)
        except TypeError:
            continue  # unhashable: PyYAML itself refuses it, with its line
        if seen is not None:
            raise ConstructorError(None, None, f"duplicate key {shown(key)} (first at line {seen})",
                                   key_node.start_mark)
        first_line[key] = key_node.start_mark.line + 1


def load_yaml(text: str, *, source: str) -> Any:
    """The one YAML document in ``text``; :class:`ConfigError` naming ``source`` and the line."""
    loader: SafeConfigLoader | None = None
    try:
        loader = SafeConfigLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML{_where(error, text)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def _where(error: yaml.YAMLError, text: str) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text[: error.position].count("\n") + 1
        return f" at line {line}: character #x{error.character:04x} is not allowed"
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return where + (f": {problem}" if problem else "")


def _check_expansion(root: Node) -> None:
    """Refuse a document whose aliases expand past ``MAX_NODES`` values or ``MAX_DEPTH`` levels.

    Sizes are memoised per node, so this costs one visit per distinct node however far the
    aliases would expand.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConstructorError(None, None, "an alias inside its own anchor (a value that contains itself)",
                                   node.start_mark)
        if depth > MAX_DEPTH:
            raise ConstructorError(None, None, f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        active.add(key)
        total = 1
        for child in _children(node):
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise ConstructorError(None, None, f"aliases expand past {MAX_NODES} values (an alias bomb?)",
                                       node.start_mark)
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_config_file(path: Path) -> Any:
    """Read and parse the config file at ``path`` (see the module for what is refused)."""
    return load_yaml(read_config_text(path), source=shown_path(path))
