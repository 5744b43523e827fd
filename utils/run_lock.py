"""A run owns its directory: an exclusive lock held for the run's lifetime.

Training, inference and latent encoding take :func:`run_lock` on their output directory before
they write anything into it. A second run into the same directory refuses at once with one line
naming the process that holds it (:class:`RunLockedError`, exit 2), so two runs never mix their
checkpoints, ``scalars.jsonl``, videos or ``results.jsonl``.

The lock is ``fcntl.flock`` on a file (``<dir>/.lock``): the kernel releases it when the holding
process ends, however it ends (also ``kill -9``), so it is never stale. The file itself stays
behind; its content (pid, host, start time, command) only names the holder in the message. Under
torchrun rank 0 takes the lock for the whole job. What a lock can promise on a network file
system is in docs/guide/reliability.md.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from utils.config import InputError
from utils.distributed import env_rank

LOCK_NAME = ".lock"
_log = logging.getLogger("nextclip.run_lock")


class RunLockedError(InputError):
    """Another live process holds the lock of the directory this run wants to write."""


def _holder(fd: int) -> str:
    """The holder's description written in the lock file ('' if it has not written it yet)."""
    for _ in range(20):  # the holder writes right after it locks: give it a moment
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return ""


def _describe(text: str) -> str:
    fields = dict(part.split("=", 1) for part in text.split("\n") if "=" in part)
    if "pid" not in fields:
        return "another process"
    where = f" on host {fields['host']}" if fields.get("host") and fields["host"] != socket.gethostname() else ""
    since = f", started {fields['started']}" if fields.get("started") else ""
    return f"process {fields['pid']}{where}{since}: {fields.get('cmd', '?')}"


@contextlib.contextmanager
def run_lock(directory: os.PathLike, what: str = "run", lock_file: os.PathLike | None = None,
             rank: int | None = None) -> Iterator[Path | None]:
    """Hold the exclusive lock of ``directory`` (created if missing) for the ``with`` block.

    Raises :class:`RunLockedError` (one line: the directory and the holder's pid) when another
    process holds it. ``lock_file`` places the lock elsewhere (a directory that will be replaced
    as a whole, like a latent cache, is locked by a file beside it). Ranks other than 0 of a
    torchrun job take no lock (rank 0 holds it for the job) and get None; so does a file system
    without lock support (with a warning).
    """
    if (env_rank()[0] if rank is None else rank) != 0:
        yield None
        return
    directory = Path(directory)
    path = Path(lock_file) if lock_file is not None else directory / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_lock(fd, path, directory, what)
        if locked:
            info = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                    f"cmd={' '.join(sys.argv)[:300]}\n")
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode("utf-8"), 0)
        yield path if locked else None
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _try_lock(fd: int, path: Path, directory: Path, what: str) -> bool:
    """True when locked, False when the file system cannot lock (warned); RunLockedError when held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP, ENOSYS
            _log.warning("cannot lock %s (%s): this file system has no working locks, so nothing stops a "
                         "second run from writing into %s at the same time", path, e.strerror, directory)
            return False
    raise RunLockedError(
        f"{directory} is in use by {_describe(_holder(fd))} (lock {path}); a second {what} into it would mix "
        f"both runs' files: wait for that one to finish, or give this {what} another log_dir or name")
