"""Files written whole or not at all, by any number of writers at once.

Each write goes to a temporary file of its own beside the target (its name carries the process id
and a random token), then replaces the target in one rename: a reader sees the old file or the new
one, never half of one, and two writers never rename each other's temporary files away. A fixed
temporary name did exactly that: one writer renamed the other's half-written file into place or
found its own gone (FileNotFoundError).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def temporary_name(path: Path) -> Path:
    """<name>.<pid>-<random>.partial beside `path`: unique to this writer."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


@contextmanager
def replacing(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; on success flush it to disk and rename it over `path`, on
    failure remove it and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(path)
    try:
        with open(partial, mode.replace("w", "x"), encoding=encoding) as file:  # x: never someone else's file
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
