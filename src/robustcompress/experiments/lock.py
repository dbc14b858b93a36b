"""An advisory lock on an output folder, so two runs never write the same run folder at once.

``with output_lock(folder):`` takes an exclusive, non-blocking ``fcntl.flock`` on
``folder/.lock`` and writes the holder's pid, host, start time and command into it. A second
holder (another process, or the same process again) fails at once with one ``UserInputError``
naming the first. The kernel releases a flock when its holder dies, even by SIGKILL, so the
``.lock`` file a killed run leaves behind never blocks the next one.

Limits: the lock is advisory (only robustcompress honours it); a child forked while it is held
keeps it until the child exits; on a network filesystem flock is as good as the server's support
(a filesystem that refuses locks gives a warning and the run goes on unlocked). Without ``fcntl``
(Windows) the lock file is created with ``O_EXCL`` and removed on exit; one left by a killed run
blocks until deleted, and the error says so (a pid-alive check is not portable there).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from robustcompress.errors import UserInputError

try:
    import fcntl
except ImportError:  # not POSIX: O_EXCL lock files
    fcntl = None

LOCK_NAME = ".lock"


@contextmanager
def output_lock(folder: Union[str, Path], command: str = "robustcompress run") -> Iterator[Path]:
    """Hold ``folder/.lock`` (creating ``folder``) for the ``with`` block; yields the lock file.

    ``command`` is recorded and shown to a second holder, which fails at once with
    ``UserInputError("runs/x is in use by robustcompress run (pid 1234 on host, since 12:03:04);
    wait for it to finish or use another --out")``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"cannot create the output folder {folder} ({e}); choose another "
                             "--out") from None
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                         "command": command}).encode()
    hold = _flock if fcntl is not None else _exclusive_file
    with hold(folder, record):
        yield folder / LOCK_NAME


def _take(fd: int, folder: Path) -> bool:
    """Lock ``fd``: True when held, False when the filesystem has no locks (warned); raises
    the in-use error when another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _in_use(folder, _parse(os.pread(fd, 4096, 0))) from None
        reason = str(e)
    warnings.warn(f"cannot lock {folder} ({reason}): its filesystem does not support locks, so "
                  "nothing stops a second run from writing into it at the same time", stacklevel=6)
    return False


@contextmanager
def _flock(folder: Path, record: bytes) -> Iterator[None]:
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserInputError(f"cannot create the lock file {path} ({e}); make {folder} writable "
                             "or choose another --out") from None
    try:
        locked = _take(fd, folder)
        if locked:
            _rewrite(fd, record)
        try:
            yield
        finally:
            if locked:
                _rewrite(fd, b"")  # still held here: nobody reads a half-cleared record
    finally:
        os.close(fd)  # releases the flock


def _rewrite(fd: int, data: bytes) -> None:
    """Replace the lock file's record; a failure (full disk) only loses the holder's details."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass


@contextmanager
def _exclusive_file(folder: Path, record: bytes) -> Iterator[None]:
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            holder = _parse(path.read_bytes())
        except OSError:
            holder = {}
        raise _in_use(folder, holder, stale=path) from None
    except OSError as e:
        raise UserInputError(f"cannot create the lock file {path} ({e}); make {folder} writable "
                             "or choose another --out") from None
    try:
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def _parse(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _in_use(folder: Path, holder: dict, stale: Union[Path, None] = None) -> UserInputError:
    """The error a second holder gets: who holds ``folder``, since when, and what to do."""
    fix = "wait for it to finish or use another --out"
    if stale is not None:
        fix += f" (if no run is using it because the last one was killed, delete {stale})"
    if "pid" not in holder:
        return UserInputError(f"{folder} is in use by another robustcompress process (it has not "
                              f"written its details yet); {fix}")
    since = holder.get("since")
    when = "?"
    if isinstance(since, (int, float)):
        same_day = time.strftime("%Y%m%d", time.localtime(since)) == time.strftime("%Y%m%d")
        when = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S",
                             time.localtime(since))
    return UserInputError(f"{folder} is in use by {holder.get('command', 'robustcompress')} "
                          f"(pid {holder['pid']} on {holder.get('host', '?')}, since {when}); {fix}")
