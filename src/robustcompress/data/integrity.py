"""File integrity: streamed checksums, the table of known checksums, and verification.

A missing or corrupted file raises one :class:`~robustcompress.errors.DataError` naming the file,
the expected checksum, what was found, and how to fix it. A file is hashed once: after a
successful check its ``(size, mtime)`` and sha256 are recorded in ``verified.json`` in the cache
directory, and later loads trust that record while size and mtime are unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from robustcompress.errors import DataError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """Accepted digests of one file; a file passes if *any* given digest matches.

    ``gunzip_md5`` is the MD5 of the decompressed content; it accepts any gzip wrapper around
    bit-identical content (the shared MNIST ``.gz`` files differ from LeCun's but decompress to
    the official bytes).
    """

    sha256: tuple[str, ...] = ()
    md5: tuple[str, ...] = ()
    gunzip_md5: Optional[str] = None

    def describe(self) -> str:
        parts = [f"sha256 {s}" for s in self.sha256] + [f"md5 {m}" for m in self.md5]
        if self.gunzip_md5:
            parts.append(f"md5 of decompressed content {self.gunzip_md5}")
        return " or ".join(parts) or "no known checksum"


# Known checksums, by file name. Shared copies (see ../shared/data/SHA256SUMS) and official files.
KNOWN: dict[str, Checksum] = {
    # MNIST: shared repack (sha256), LeCun's .gz (md5), and the official uncompressed MD5s.
    "train-images-idx3-ubyte.gz": Checksum(
        ("71524e2cd1ad2968737f7f2f2ff69cbfc32df8ccddff51593f7cb2d4e0eb5b64",),
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873",), "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte.gz": Checksum(
        ("fe03b8bd7915f70bf5aa08be480aa413fbd85afcaa58b35d230d335f284fd88e",),
        ("d53e105ee54ea40749a09fcbcd1e9432",), "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte.gz": Checksum(
        ("5634745efa576a17e7d4cf5cd9d09123c75e6538e5114267c2d156edaf519341",),
        ("9fb629c4189551a2d022fa330f9573f3",), "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte.gz": Checksum(
        ("ae18e77e031ccde52407f794d123116439864147d33ac992975f85dd4dc42af6",),
        ("ec29112dd5afa0611ce80d1b7f02629c",), "27ae3e4e09519cfbb04c329615203637"),
    "train-images-idx3-ubyte": Checksum(md5=("6bbc9ace898e44ae57da46a324031adb",)),
    "train-labels-idx1-ubyte": Checksum(md5=("a25bea736e30d166cdddb491f175f624",)),
    "t10k-images-idx3-ubyte": Checksum(md5=("2646ac647ad5339dbf082846283269ea",)),
    "t10k-labels-idx1-ubyte": Checksum(md5=("27ae3e4e09519cfbb04c329615203637",)),
    # CIFAR-10: the official python archive, and the shared lossy JPEG copy.
    "cifar-10-python.tar.gz": Checksum(md5=("c58f30108f718f92721af3b95e74349a",)),
    "cifar10-jpeg.tar.gz": Checksum(
        ("96729b3e4feb3de8b132ac0c7a289ec207370154a864847390c1354dbf971a0f",)),
    # Speech Commands: the official v0.02 archive, and the shared test-set subset + member list.
    "speech_commands_v0.02.tar.gz": Checksum(
        ("af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",)),
    "speech_commands_subset.tar.xz": Checksum(
        ("788489481b4ddda46b7cbb5893405037ecdf9b071b535b4638538aec18762de9",)),
    "speech_commands_subset.members.sha256": Checksum(
        ("cc6036959fd830eef205b3a8aec83567327843d68442bcad46874bcd6756ca23",)),
    # FSDD: the shared tar of recordings/ (v1.0.10).
    "fsdd-recordings.tar": Checksum(
        ("48697dce8b5b10e0e86d8556f204d87fd23506b6f389790d3a650c8e24c17ab2",)),
}



def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def known_checksum(path: Path) -> Optional[Checksum]:
    """The known checksum of a file, looked up by its name (None when unknown)."""
    return KNOWN.get(Path(path).name)


def _stream(path: Path, *hashes) -> None:
    """Feed the file to every hash object, 1 MiB at a time (constant memory)."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashes:
                h.update(chunk)


def file_sha256(path: Path) -> str:
    """Streamed sha256 hex digest of a file (checkpoints, cache files)."""
    sha = hashlib.sha256()
    _stream(path, sha)
    return sha.hexdigest()


def file_digests(path: Path) -> tuple[str, str]:
    """Streamed ``(sha256, md5)`` hex digests of a file (1 MiB chunks, constant memory)."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    _stream(path, sha, md5)
    return sha.hexdigest(), md5.hexdigest()


def gunzip_md5(path: Path) -> Optional[str]:
    """MD5 of the decompressed content of a gzip file, or None when it is not valid gzip."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                md5.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return md5.hexdigest()


def fix_hint(dataset: Optional[str]) -> str:
    """How to get a good copy: re-download, or point the data root at one."""
    dl = f"`robustcompress data download {dataset}` (where supported) or " if dataset else ""
    return (f"re-download it with {dl}copy it again from the original, or point --data-dir / "
            "$ROBUSTCOMPRESS_DATA at a folder with a good copy (e.g. ../shared/data)")


def matches(path: Path, checksum: Checksum, sha: str, md5: str) -> bool:
    """Whether the file (with digests ``sha``/``md5``) satisfies ``checksum``."""
    if sha in checksum.sha256 or md5 in checksum.md5:
        return True
    if checksum.gunzip_md5 and gunzip_md5(path) == checksum.gunzip_md5:
        return True
    return not (checksum.sha256 or checksum.md5 or checksum.gunzip_md5)


def _stamps_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / "verified.json"


def _read_stamps(cache_dir: Optional[Path]) -> dict:
    if cache_dir is None:
        return {}
    try:
        return json.loads(_stamps_path(cache_dir).read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(cache_dir: Optional[Path], path: Path, st: os.stat_result, sha: str,
                 verified: bool) -> None:
    if cache_dir is None:
        return
    stamps = _read_stamps(cache_dir)
    stamps[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "sha256": sha, "verified": verified}
    try:
        atomic_write_bytes(_stamps_path(cache_dir), json.dumps(stamps, indent=1).encode())
    except OSError:
        pass  # no cache: the file is hashed again next time, nothing else is lost


def verify_file(path: Path, checksum: Optional[Checksum] = None, *,
                cache_dir: Optional[Path] = None, dataset: Optional[str] = None,
                force: bool = False) -> str:
    """Check ``path`` against ``checksum`` (default: the known one for its name); return its sha256.

    Raises
    ------
    DataError
        The file is missing, or none of the accepted digests matches. The message names the
        file, the expected and the found checksum and how to fix it.
    """
    path = Path(path)
    checksum = checksum if checksum is not None else known_checksum(path)
    if not path.is_file():
        exp = checksum.describe() if checksum else "any"
        raise DataError(f"{path} is missing (expected {exp}); {fix_hint(dataset)}")
    st = path.stat()
    stamp = _read_stamps(cache_dir).get(str(path.resolve()))
    if (not force and stamp and stamp["size"] == st.st_size and stamp["mtime_ns"] == st.st_mtime_ns
            and (stamp.get("verified") or checksum is None)):
        return stamp["sha256"]
    sha, md5 = file_digests(path)
    if checksum is not None and not matches(path, checksum, sha, md5):
        raise DataError(f"{path} is corrupted or not the expected file: expected "
                        f"{checksum.describe()}, found sha256 {sha} ({st.st_size} bytes); "
                        f"{fix_hint(dataset)}")
    _write_stamp(cache_dir, path, st, sha, checksum is not None)
    return sha


def read_sha256_list(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style list (``<hex>  <name>`` per line) into ``{name: hex}``."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            out[name.strip().lstrip("*")] = digest.lower()
    return out


def check_member(archive: Path, name: str, data: bytes, expected: Optional[str],
                 dataset: Optional[str] = None) -> None:
    """Raise DataError if the member ``name`` of ``archive`` does not have sha256 ``expected``."""
    if expected is None:
        return
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise DataError(f"{archive}: member {name} is corrupted: expected sha256 {expected}, "
                        f"found {got}; {fix_hint(dataset)}")
