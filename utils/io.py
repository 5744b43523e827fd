"""Small I/O helpers: atomic writes, and cleaning up after writers that were killed."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from typing import Iterator, List

#: temp files made by :func:`atomic_path`: ``.<name>.<pid>.<random>.tmp<ext>``
TEMP_RE = re.compile(r"^\..*\.(\d+)\.[^.]+\.tmp(\.[^.]*)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_full_hint(err: BaseException) -> str:
    """' (the disk is full: ...)' for ENOSPC / EDQUOT errors, '' otherwise."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return " (no space left on the device: free some space, then run the same command again)"
    return ""


@contextlib.contextmanager
def atomic_path(path: os.PathLike, require_nonempty: bool = False) -> Iterator[str]:
    """Yield a temp path beside ``path`` with the same extension; move it into place on success.

    On any exception (including KeyboardInterrupt) the temp file is removed and ``path``
    is left untouched, so an interrupted write never leaves a file that looks complete.
    With ``require_nonempty`` an empty result counts as a failed write (OSError, nothing
    renamed): media writers whose encoder failed without raising leave 0-byte files.
    The temp name carries the writer's pid, so :func:`clean_stale_temps` can remove what
    a killed writer left. The final file gets the usual permissions (0666 minus the umask).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base[:40]}.{os.getpid()}.", suffix=f".tmp{ext}", dir=d)
    os.close(fd)
    try:
        yield tmp
        if require_nonempty and os.path.getsize(tmp) == 0:
            raise OSError(errno.EIO, f"the writer produced an empty file for {path!r}; nothing was written")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(directory: os.PathLike, max_age_s: float = 24 * 3600) -> List[str]:
    """Remove temp files of :func:`atomic_path` in ``directory`` whose writer is gone.

    A temp file is stale when the pid in its name is not running on this machine, or when
    it is older than ``max_age_s`` (a writer on another host of a shared file system).
    Files of live writers (another rank writing right now) are kept. Returns what was removed.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    removed, now = [], time.time()
    for name in os.listdir(directory):
        m = TEMP_RE.match(name)
        if not m:
            continue
        p = os.path.join(directory, name)
        try:
            old = now - os.path.getmtime(p) > max_age_s
            if (old or not _pid_alive(int(m.group(1)))) and int(m.group(1)) != os.getpid():
                os.remove(p)
                removed.append(p)
        except OSError:  # vanished meanwhile, or not ours to remove
            continue
    return removed
