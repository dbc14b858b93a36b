"""Safe, uniform reading of a dataset *source*: a plain folder or a tar archive (.tar, .tar.gz, .tgz, .tar.xz, .tar.bz2).

Members with an absolute path or a ``..`` component are rejected (DataError) before anything is
read or written; links, devices and other non-regular members are skipped when reading and
refused by ``tarfile``'s ``"data"`` filter when extracting.
"""

from __future__ import annotations

import lzma
import posixpath
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

from robustcompress.errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def is_archive(path: Path) -> bool:
    """True for a file whose name ends like a tar archive."""
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(ARCHIVE_SUFFIXES)


def member_name(archive: Path, name: str) -> str:
    """The normalised relative name of a member, or DataError for absolute / ``..`` paths."""
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (
            len(name) > 1 and name[1] == ":"):
        raise DataError(f"archive {archive} contains a member with an absolute path ({name!r}); "
                        "refusing to read it. Use a trusted copy of the dataset.")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"archive {archive} contains a member that escapes its folder ({name!r}); "
                        "refusing to read it. Use a trusted copy of the dataset.")
    return posixpath.join(*parts) if parts else ""


def _unreadable(archive: Path, e: BaseException) -> DataError:
    return DataError(f"archive {archive} is unreadable or truncated ({type(e).__name__}: {e}); "
                     "re-download or re-copy it, or point --data-dir / $ROBUSTCOMPRESS_DATA at a "
                     "good copy")


def list_files(source: Path) -> list[str]:
    """Sorted relative POSIX names of the regular files in a folder or tar archive."""
    source = Path(source)
    if source.is_dir():
        return sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    out = []
    try:
        with tarfile.open(source, "r|*") as tf:
            for m in tf:
                name = member_name(source, m.name)
                if m.isfile() and name:
                    out.append(name)
    except _TAR_ERRORS as e:
        raise _unreadable(source, e) from e
    return sorted(out)


def iter_files(source: Path, wanted: Optional[Iterable[str]] = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for the regular files of a folder or archive (those in ``wanted``).

    Folders are read in sorted order, archives in archive order, in one streaming pass.
    """
    source = Path(source)
    want = None if wanted is None else set(wanted)
    if source.is_dir():
        names = sorted(want) if want is not None else list_files(source)
        for n in names:
            p = source / n
            if not p.is_file():
                raise DataError(f"{p} is missing; re-copy the dataset folder or re-download it")
            yield n, p.read_bytes()
        return
    try:
        with tarfile.open(source, "r|*") as tf:
            for m in tf:
                name = member_name(source, m.name)
                if not m.isfile() or not name or (want is not None and name not in want):
                    continue
                f = tf.extractfile(m)
                yield name, f.read() if f is not None else b""
    except _TAR_ERRORS as e:
        raise _unreadable(source, e) from e


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest`` with ``filter="data"`` after checking every member name."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                member_name(archive, m.name)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python < 3.10.12 has no filters: extract plain files and folders only
                tf.extractall(dest, members=[m for m in members if m.isfile() or m.isdir()])
    except tarfile.FilterError as e:
        raise DataError(f"archive {archive} has an unsafe member ({e}); refusing to extract it") from e
    except _TAR_ERRORS as e:
        raise _unreadable(archive, e) from e
