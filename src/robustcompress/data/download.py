"""Optional download of the canonical sources, each verified against its known checksum.

Each file is streamed to a temporary file in the destination folder, checked, and only then
moved into place with ``os.replace``; a checksum mismatch deletes the temporary file and raises
DataError (the next mirror is tried first). Archives are read in place by the loaders;
``extract=True`` also unpacks them with ``tarfile``'s ``filter="data"`` after rejecting absolute
or ``..`` member names.

Sources: MNIST from the PyTorch S3 mirror or LeCun's site (checked by the ``.gz`` MD5s, or the MD5
of the official decompressed content); CIFAR-10 ``cifar-10-python.tar.gz`` from Toronto (MD5
``c58f30108f718f92721af3b95e74349a``); Speech Commands ``speech_commands_v0.02.tar.gz`` from
TensorFlow's storage (sha256 ``af14739e...``, 2.3 GB).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from robustcompress.data.archives import safe_extract
from robustcompress.data.integrity import KNOWN, Checksum, file_digests, matches
from robustcompress.errors import DataError, UserInputError

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class Resource:
    """One file to download: mirror URLs, file name, sub-folder of the data root, checksum."""

    urls: tuple[str, ...]
    filename: str
    subdir: str
    checksum: Checksum


RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": tuple(Resource(tuple(m + f for m in MNIST_MIRRORS), f, "mnist", KNOWN[f])
                   for f in MNIST_FILES),
    "cifar10": (Resource(("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                         "cifar-10-python.tar.gz", "cifar10", KNOWN["cifar-10-python.tar.gz"]),),
    "speech_commands": (Resource(
        ("https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
         "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"),
        "speech_commands_v0.02.tar.gz", "speech_commands", KNOWN["speech_commands_v0.02.tar.gz"]),),
}

Fetch = Callable[[str, Path], None]


def fetch_url(url: str, dest: Path, chunk: int = 1 << 20) -> None:
    """Stream ``url`` (http, https or file) into ``dest``."""
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, chunk)


def download_resource(res: Resource, root: Path, *, fetch: Optional[Fetch] = None,
                      force: bool = False) -> Path:
    """Download one resource into ``root/res.subdir`` unless a verified copy is already there."""
    fetch = fetch or fetch_url
    dest = Path(root) / res.subdir / res.filename
    if dest.is_file() and not force:
        sha, md5 = file_digests(dest)
        if matches(dest, res.checksum, sha, md5):
            return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest.parent} ({e}); choose a writable --data-dir") from e
    errors = []
    for url in res.urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{res.filename}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch(url, tmp)
            sha, md5 = file_digests(tmp)
            if not matches(tmp, res.checksum, sha, md5):
                errors.append(f"{url}: checksum mismatch, expected {res.checksum.describe()}, "
                              f"found sha256 {sha} md5 {md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, urllib.error.URLError, ValueError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {res.filename} into {dest.parent}: " + "; ".join(errors)
                    + f". Check the network, or download it by hand into {dest.parent} "
                      "(or point --data-dir / $ROBUSTCOMPRESS_DATA at a copy)")


def download(name: str, root, *, fetch: Optional[Fetch] = None, extract: bool = False,
             force: bool = False) -> list[Path]:
    """Download dataset ``name`` into data root ``root``; return the verified files.

    Parameters
    ----------
    fetch : ``fetch(url, dest_path)``; default :func:`fetch_url` (tests pass one that copies
        local files).
    extract : also unpack archives next to them (``filter="data"``).
    force : download even if a verified copy exists.
    """
    if name not in RESOURCES:
        raise UserInputError(f"no download for {name!r}; downloadable: {', '.join(RESOURCES)} "
                             "(digits ships with scikit-learn; get FSDD from "
                             "github.com/Jakobovski/free-spoken-digit-dataset (recordings/) or "
                             "use ../shared/data, which also holds the CIFAR-10 JPEG copy and "
                             "the Speech Commands subset)")
    out = [download_resource(r, Path(root), fetch=fetch, force=force) for r in RESOURCES[name]]
    if extract:
        for p in out:
            if p.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz")):
                safe_extract(p, p.parent)
    return out
