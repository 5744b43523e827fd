"""Small I/O helpers: atomic writes."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: os.PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path`` with the same extension; move it into place on success.

    On any exception (including KeyboardInterrupt) the temp file is removed and ``path``
    is left untouched, so an interrupted write never leaves a file that looks complete.
    The final file gets the usual permissions (0666 minus the umask).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base[:40]}.", suffix=f".tmp{ext}", dir=d)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
