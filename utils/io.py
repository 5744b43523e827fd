"""Small I/O helpers: atomic writes, and cleaning up after writers that were killed."""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

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


def as_os_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind a failed write (None if there is none): the safetensors writer reports it as its
    own exception type with the OS message ("I/O error: No space left on device (os error 28)")."""
    if isinstance(e, OSError) and e.errno is not None:
        return e
    m = re.search(r"os error (\d+)", str(e))
    if m:
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
    return None


# ---------------------------------------------------------------------------- directories replaced whole
def _staged(final: Path, tag: str) -> Path:
    return final.parent / f".{final.name}.{tag}-{os.getpid()}"


def recover_replaced_dir(final: os.PathLike) -> List[str]:
    """Clean up after a :func:`replace_dir` that was killed; call it holding ``final``'s lock.

    A swap cut between its two renames left ``final`` missing and the old copy as ``.<name>.old-<pid>``:
    the old copy is put back. Half-written new copies (``.<name>.new-<pid>``) and old copies of a
    finished swap are removed. Returns one line per action.
    """
    final = Path(final)
    done: List[str] = []
    if not final.parent.is_dir():
        return done
    for p in sorted(final.parent.glob(f".{glob.escape(final.name)}.old-*")):
        if not final.exists():
            os.rename(p, final)
            done.append(f"restored {final} from {p.name} (a replacement was interrupted)")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p} (the old copy of a finished replacement)")
    for p in sorted(final.parent.glob(f".{glob.escape(final.name)}.new-*")):
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p} (an unfinished replacement)")
    return done


@contextlib.contextmanager
def replace_dir(final: os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside ``final``; when the block succeeds it takes ``final``'s place.

    ``final`` is not touched until the block has finished: an exception, a full disk or a kill
    leaves it as it was (the new copy is removed, or :func:`recover_replaced_dir` removes it later).
    The swap is two renames (old aside, new in place), then the old copy is deleted.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    new = _staged(final, "new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    try:
        yield new
        if final.exists():
            old = _staged(final, "old")
            os.rename(final, old)
            os.rename(new, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(new, final)
    finally:
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)
