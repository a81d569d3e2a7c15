"""Names that can only name a folder, and paths that stay inside their parent.

A run name, a compare schedule name, or anything else from a config that becomes a path component
must name exactly one folder below its parent: ``..`` would put a run beside ``--runs-dir`` (and
overwrite a ``config.yaml`` there), ``.`` would put it into the runs folder itself, and ``a/b`` or
``/abs`` would go wherever they point. :func:`check_name` refuses those; :func:`child_path` also
refuses a child that resolves outside its parent (a symlink pointing elsewhere).
"""

from __future__ import annotations

import re
from pathlib import Path

from synthloop.store import RunDirectoryError
from synthloop.yamlio import ConfigError, shown

MAX_NAME = 100  # a config's names; runs add suffixes (-compare, -seed3) within the OS's 255
NAME_MAX = 255  # bytes in one path component (Linux, macOS)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"


class PathEscapeError(RunDirectoryError):
    """A path built from a name resolves outside the folder it was meant to stay in."""


def check_name(name: object, *, max_length: int = MAX_NAME) -> str:
    """``name`` if it can only name one folder; ``ValueError`` saying why not otherwise.

    >>> check_name("exponential-0.5")
    'exponential-0.5'
    >>> check_name("..")
    Traceback (most recent call last):
    ...
    ValueError: '..' is not a folder name: use letters, digits, '.', '_' and '-', starting with a letter or digit
    """
    if not isinstance(name, str):
        raise ValueError(f"a name must be a string, got {shown(name)}")
    if not name:
        raise ValueError("a name cannot be empty")
    if len(name) > max_length:
        raise ValueError(f"a name has at most {max_length} characters, got {len(name)}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{shown(name)} is not a folder name: use {NAME_RULE}")
    return name


def child_path(parent: Path, name: str, *, what: str = "name") -> Path:
    """``parent / name``, checked: ``name`` is one folder name and the result stays inside ``parent``.

    A bad name is a :class:`ConfigError` (``what`` names the field); a child that resolves outside
    ``parent`` (a symlink) is a :class:`PathEscapeError`.
    """
    try:
        check_name(name, max_length=NAME_MAX)
    except ValueError as error:
        raise ConfigError(f"{what}: {error}") from None
    child = Path(parent) / name
    base, resolved = Path(parent).resolve(), child.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise PathEscapeError(f"{child} resolves to {resolved}, outside {parent}; remove the link or "
                              "choose another name")
    return child
