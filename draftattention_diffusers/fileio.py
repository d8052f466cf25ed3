"""Files written whole or not at all.

An interrupted write (Ctrl-C, a full disk, a crash) must neither leave a truncated file under the final name nor
destroy an older file of that name. :func:`atomic_path` hands the writer a temporary file in the same folder and
moves it into place (``os.replace``, atomic on one file system) only when the writer returns.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

PARTIAL_TAG = ".partial"
"""Part of every temporary file's name (``.<stem>.<random>.partial<suffix>``): such files are never complete."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same folder, same suffix, so writers that choose a format by the
    suffix work); when the block ends without an exception it replaces ``path``. On any exception, Ctrl-C
    included, the temporary file is removed and ``path`` (if it existed) is untouched. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{PARTIAL_TAG}{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (non-JSON values through ``str``; ``inf`` as ``Infinity``, which Python's json
    reads back) through :func:`atomic_path`."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))


__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "PARTIAL_TAG"]
