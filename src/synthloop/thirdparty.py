"""Third-party output (transformers, datasets, diffusers, peft, ... warnings, log lines and progress
bars) goes to a log file in the run directory, not between synthloop's own lines.

A run prints its plan, parts and iterations; a library's "generation flags are not valid" warning or
"Loading weights" bar in the middle of them reads like one of synthloop's messages and buries the ones
that matter. :func:`routed` sends, for the time of a run:

- records of the libraries' loggers (``logging``) to the file, including handlers a library adds
  when it is first imported during the run (transformers adds a stderr handler then);
- Python warnings raised outside synthloop to the file (synthloop's own stay on stderr; the warning
  filters are left alone, so a test suite that makes warnings errors still sees them);
- the libraries' tqdm progress bars off (``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_DATASETS_DISABLE_
  PROGRESS_BARS``, ``TQDM_DISABLE``, read when those libraries are imported): synthloop shows the
  progress of each long step itself.

Everything is put back when the run ends. The file is created only when something is written to it.
Standard library only: the core imports no ML framework.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

#: Where a run's third-party output goes, relative to its run directory.
THIRDPARTY_LOG = Path("logs") / "thirdparty.log"
LIBRARIES = ("transformers", "datasets", "diffusers", "peft", "trl", "accelerate", "huggingface_hub",
             "tokenizers", "torch", "safetensors", "sentence_transformers", "reasoning_gym", "math_verify",
             "filelock", "urllib3", "httpx", "fsspec")
QUIET_BARS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class _LazyFileHandler(logging.FileHandler):
    """A file handler that creates the file (and its folder) at the first record, not before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def _open(self) -> io.TextIOWrapper:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def write_line(self, text: str) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            stream = self.stream if self.stream is not None else self._open()
            self.stream = stream
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()


class _Diverted(list[logging.Handler]):
    """A logger's handler list while routed: a console handler a library adds (on its first import)
    is held back and put in place when the routing ends, so its output goes to the file meanwhile."""

    def __init__(self, handlers: list[logging.Handler]) -> None:
        super().__init__(handlers)
        self.held: list[logging.Handler] = []

    def append(self, handler: logging.Handler) -> None:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream in (sys.stderr, sys.stdout,
                                                                       sys.__stderr__, sys.__stdout__):
            self.held.append(handler)
        else:
            super().append(handler)


@contextlib.contextmanager
def routed(path: Path) -> Iterator[Path]:
    """Third-party log records, warnings and progress bars into ``path`` while the block runs."""
    handler = _LazyFileHandler(Path(path))
    saved: dict[str, tuple[Any, bool | None]] = {}
    for name in LIBRARIES:
        existed = name in logging.Logger.manager.loggerDict
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers, logger.propagate if existed else None)
        logger.handlers = _Diverted([handler])
        logger.propagate = False
    environment = {key: os.environ.get(key) for key in QUIET_BARS}
    os.environ.update({key: value for key, value in QUIET_BARS.items() if key not in os.environ})
    show = warnings.showwarning

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
            show(message, category, filename, lineno, file, line)  # synthloop's own: for the user
        else:
            handler.write_line(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    warnings.showwarning = showwarning
    try:
        yield Path(path)
    finally:
        warnings.showwarning = show
        _restore_environment(environment)
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            held = logger.handlers.held if isinstance(logger.handlers, _Diverted) else []
            logger.handlers = [*handlers, *(h for h in held if h not in handlers)]
            # a logger a library set up during the run keeps its own handler and does not propagate
            logger.propagate = propagate if propagate is not None else not held
        handler.close()


def _restore_environment(environment: dict[str, str | None]) -> None:
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
