"""Integrity, safe archives, downloads, root resolution, decoders: tiny synthetic files in tmp_path."""

import gzip
import io
import os
import pickle
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustcompress.data import load_dataset, resolve_data_root
from robustcompress.data import roots
from robustcompress.data.archives import list_files, safe_extract
from robustcompress.data.audio import read_wav
from robustcompress.data.cifar10 import read_batch
from robustcompress.data.download import Resource, download, download_resource
from robustcompress.data.integrity import KNOWN, Checksum, verify_file
from robustcompress.data.splits import stratified_first
from robustcompress.errors import DataError

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------ integrity

def test_corrupted_file_names_file_and_checksums(data_root, tmp_path):
    d = tmp_path / "root" / "mnist"
    d.mkdir(parents=True)
    for f in MNIST_FILES[:3]:
        os.symlink(data_root / "mnist" / f, d / f)
    raw = bytearray((data_root / "mnist" / MNIST_FILES[3]).read_bytes())
    raw[100] ^= 0xFF  # flip one byte
    (d / MNIST_FILES[3]).write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path / "root", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert MNIST_FILES[3] in msg and KNOWN[MNIST_FILES[3]].sha256[0] in msg
    assert "found sha256" in msg and "robustcompress data download mnist" in msg


def test_missing_mnist_file_is_named(data_root, tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for f in MNIST_FILES[:3]:
        os.symlink(data_root / "mnist" / f, d / f)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is missing \(expected sha256 ae18"):
        load_dataset("mnist", tmp_path, cache_dir=tmp_path / "c")


def test_missing_file_and_verified_stamp(tmp_path):
    p = tmp_path / "fsdd-recordings.tar"
    with pytest.raises(DataError, match="missing.*48697dce"):
        verify_file(p)
    p.write_bytes(b"x")
    ok = Checksum(sha256=("2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",))
    cache = tmp_path / "c"
    assert verify_file(p, ok, cache_dir=cache) == ok.sha256[0]
    assert (cache / "verified.json").is_file()
    p.write_bytes(b"y")  # changed size/mtime: the stamp no longer vouches for it
    with pytest.raises(DataError, match="expected sha256 2d71"):
        verify_file(p, ok, cache_dir=cache)


def test_gunzip_md5_accepts_other_gzip_wrappers(data_root, tmp_path):
    """LeCun-style .gz of the same content passes via the decompressed-content MD5."""
    content = gzip.decompress((data_root / "mnist" / MNIST_FILES[3]).read_bytes())
    p = tmp_path / MNIST_FILES[3]
    p.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    assert verify_file(p)  # sha256 differs from the shared copy, content MD5 matches
    p.write_bytes(gzip.compress(content[:-1] + b"\x00", mtime=0))
    with pytest.raises(DataError, match="md5 of decompressed content 27ae3e4e"):
        verify_file(p)


# ------------------------------------------------------------------ archives

def _tar_with(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("bad", ["../evil.wav", "recordings/../../evil.wav", "/tmp/evil.wav"])
def test_unsafe_members_are_rejected(tmp_path, bad):
    arc = _tar_with(tmp_path / "a.tar", {"recordings/0_x_0.wav": b"RIFF", bad: b"pwned"})
    with pytest.raises(DataError, match="refusing"):
        list_files(arc)
    with pytest.raises(DataError, match="refusing"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "evil.wav").exists() and not (tmp_path / "out").exists()


def test_crafted_archive_rejected_by_loader(tmp_path):
    _tar_with(tmp_path / "recordings.tar", {"recordings/../../../evil.wav": b"x"})
    (tmp_path / "fsdd").mkdir()
    os.replace(tmp_path / "recordings.tar", tmp_path / "fsdd" / "custom.tar")
    (tmp_path / "fsdd" / "recordings.tar").symlink_to(tmp_path / "fsdd" / "custom.tar")
    with pytest.raises(DataError):
        load_dataset("fsdd", tmp_path, cache_dir=tmp_path / "c")


def test_truncated_archive_is_a_data_error(tmp_path):
    arc = _tar_with(tmp_path / "x.tar.gz", {f"train/a/{i}.png": os.urandom(5000) for i in range(3)},
                    "w:gz")
    arc.write_bytes(arc.read_bytes()[:3000])
    with pytest.raises(DataError, match="unreadable or truncated"):
        list_files(arc)


# ------------------------------------------------------------------ CIFAR pickles

def _batch(n: int, label0: int, protocol: int = 2) -> bytes:
    data = np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072)
    d = {b"batch_label": b"synthetic", b"labels": [(label0 + i) % 10 for i in range(n)],
         b"data": data, b"filenames": [b"f%d.png" % i for i in range(n)]}
    return pickle.dumps(d, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_canonical_cifar_batches_are_parsed_without_unpickling_code(tmp_path, protocol):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(_batch(4, i, protocol))
    (d / "test_batch").write_bytes(_batch(3, 0, protocol))
    ds = load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "c")
    assert (len(ds.train), len(ds.test)) == (20, 3) and ds.info.note == ""
    raw = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3, 32, 32)
    assert torch.equal(ds.train.x[:4], torch.from_numpy(raw).float() / 255)
    assert ds.train.y[:4].tolist() == [1, 2, 3, 4]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch should_not_exist",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blob = pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match="refusing"):
        read_batch(blob, "evil_batch")
    assert not (tmp_path / "should_not_exist").exists()


# ------------------------------------------------------------------ image folders

def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _image_tree(root: Path, n: int = 6, size: int = 5) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "test"):
        for cls in ("cat", "ant", "bee"):
            for i in range(n if split == "train" else 2):
                files[f"{split}/{cls}/{i:03d}.png"] = _png(rng.integers(0, 256, (size, size, 3),
                                                                        dtype=np.uint8))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_imagefolder_folder_and_archive_agree_and_limits(tmp_path):
    files = _image_tree(tmp_path / "imgs")
    ds = load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c")
    assert ds.info.class_names == ("ant", "bee", "cat") and ds.info.shape == (3, 5, 5)
    assert (len(ds.train), len(ds.test)) == (18, 6)
    from PIL import Image

    first = np.array(Image.open(io.BytesIO(files["train/ant/000.png"])))
    assert torch.equal(ds.train.x[0], torch.from_numpy(first.transpose(2, 0, 1)).float() / 255)
    _tar_with(tmp_path / "imgs.tar.gz", {f"top/{k}": v for k, v in files.items()}, "w:gz")
    arc = load_dataset("imagefolder", tmp_path / "imgs.tar.gz", cache_dir=tmp_path / "c2")
    assert torch.equal(arc.train.x, ds.train.x) and torch.equal(arc.test.y, ds.test.y)
    # a limited first load decodes only the subset; it equals the full load's stratified prefix
    lim = load_dataset("imagefolder", tmp_path / "imgs.tar.gz", cache_dir=tmp_path / "c3",
                       train_limit=7, test_limit=3)
    idx = stratified_first(ds.train.y.numpy(), 7)
    assert torch.equal(lim.train.x, ds.train.x[idx]) and len(lim.test) == 3


def test_imagefolder_cache_invalidated_by_changed_source(tmp_path):
    _image_tree(tmp_path / "imgs")
    a = load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c")
    b = load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c")
    assert b.extra["cache_hit"] and not a.extra["cache_hit"]
    (tmp_path / "imgs/train/ant/000.png").write_bytes(_png(np.zeros((5, 5, 3), np.uint8)))
    c = load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c")
    assert not c.extra["cache_hit"] and float(c.train.x[0].max()) == 0.0


def test_imagefolder_inconsistent_mode_and_size(tmp_path):
    _image_tree(tmp_path / "imgs")
    (tmp_path / "imgs/train/bee/zzz.png").write_bytes(_png(np.zeros((5, 5), np.uint8)))  # grey
    with pytest.raises(DataError, match="zzz.png is L.*mode='RGB'"):
        load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c")
    ds = load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c", mode="RGB")
    assert ds.info.shape == (3, 5, 5)
    (tmp_path / "imgs/train/bee/zzz.png").write_bytes(_png(np.zeros((7, 5, 3), np.uint8)))
    with pytest.raises(DataError, match="zzz.png is 5x7.*resize"):
        load_dataset("imagefolder", tmp_path / "imgs", cache_dir=tmp_path / "c")


# ------------------------------------------------------------------ audio

def _wav(samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def test_wav_decoding_widths_and_channels():
    s = np.array([-32768, -1, 0, 1, 32767], np.int16)
    a, r = read_wav(_wav(s, 16000), "x")
    assert r == 16000 and np.array_equal(a, s)
    u8 = np.array([0, 128, 255], np.uint8)
    assert read_wav(_wav(u8, 8000, width=1), "x")[0].tolist() == [-32768, 0, 32512]
    st2 = np.array([[100, 300], [-100, -300]], np.int16)
    assert read_wav(_wav(st2, 8000, channels=2), "x")[0].tolist() == [200, -200]
    with pytest.raises(DataError, match="not a readable"):
        read_wav(b"RIFFjunk", "x.wav")


def test_speech_commands_full_layout_mapping(tmp_path):
    root = tmp_path / "speech_commands"
    rng = np.random.default_rng(0)
    clip = lambda n: rng.integers(-1000, 1000, n).astype(np.int16)  # noqa: E731
    files = {f"yes/{s}_nohash_0.wav": clip(16000) for s in ("aaaa1111", "bbbb2222", "cccc3333")}
    files.update({f"cat/{s}_nohash_1.wav": clip(12000) for s in ("dddd4444", "eeee5555")})
    files["_background_noise_/noise.wav"] = clip(16000 * 3 + 500)
    for name, a in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_wav(a, 16000))
    ds = load_dataset("speech_commands", tmp_path, cache_dir=tmp_path / "c", split="resplit")
    ys = torch.cat([ds.train.y, ds.test.y]).tolist()
    assert sorted(ys) == [0, 0, 0, 10, 10, 11, 11, 11]  # yes x3, unknown x2, 3 noise windows
    x = torch.cat([ds.train.x, ds.test.x])
    assert x.shape[1:] == (1, 16000)
    short = x[torch.cat([ds.train.y, ds.test.y]) == 10]
    assert torch.all(short[:, 0, 12000:] == 0)  # padded at the end


# ------------------------------------------------------------------ download

def test_download_from_file_url_and_mismatch(data_root, tmp_path):
    src = data_root / "mnist" / MNIST_FILES[3]
    res = Resource((src.as_uri(),), MNIST_FILES[3], "mnist", KNOWN[MNIST_FILES[3]])
    out = download_resource(res, tmp_path / "root")
    assert out == tmp_path / "root" / "mnist" / MNIST_FILES[3]
    assert out.read_bytes() == src.read_bytes()
    bad = Resource(("file:///nonexistent/x.gz", src.as_uri()), "other.gz", "mnist",
                   Checksum(sha256=("0" * 64,)))
    with pytest.raises(DataError, match="checksum mismatch.*expected sha256 0000") as e:
        download_resource(bad, tmp_path / "root")
    assert "nonexistent" in str(e.value)  # the failing mirror is reported too
    assert not (tmp_path / "root" / "mnist" / "other.gz").exists()
    assert [p.name for p in (tmp_path / "root" / "mnist").iterdir()] == [MNIST_FILES[3]]


def test_load_with_download_uses_fetch(data_root, tmp_path, monkeypatch):
    import shutil

    import robustcompress.data.download as dl

    fetched = []

    def fake_fetch(url, dest):
        fetched.append(url)
        shutil.copyfile(data_root / "mnist" / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(dl, "fetch_url", fake_fetch)
    root = tmp_path / "root"
    root.mkdir()
    ds = load_dataset("mnist", root, download=True, cache_dir=tmp_path / "c", test_limit=10)
    assert len(fetched) == 4 and fetched[0].startswith(dl.MNIST_MIRRORS[0])
    assert len(ds.train) == 60000 and sorted(ds.test.y.tolist()) == list(range(10))
    assert download("mnist", root, fetch=fake_fetch) and len(fetched) == 4  # verified copies kept


# ------------------------------------------------------------------ data root

def test_resolve_data_root_order(tmp_path, monkeypatch):
    work = tmp_path / "work" / "repo"
    (work / "data").mkdir(parents=True)
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv(roots.ENV_VAR, raising=False)
    monkeypatch.setattr(roots, "_REPO", tmp_path / "nowhere")
    assert resolve_data_root() == (work / "data").resolve()
    # ./data without the dataset does not hide ../shared/data that has it
    shared = (tmp_path / "work" / "shared" / "data").resolve()
    assert resolve_data_root(contains=lambda p: p == shared) == shared
    (work / "data").rmdir()
    assert resolve_data_root() == shared
    monkeypatch.setenv(roots.ENV_VAR, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root(tmp_path / "work") == tmp_path / "work"  # flag beats env
    monkeypatch.setenv(roots.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(DataError, match="ROBUSTCOMPRESS_DATA"):
        resolve_data_root()
    with pytest.raises(DataError, match="--data-dir"):
        resolve_data_root(tmp_path / "nope")
    monkeypatch.delenv(roots.ENV_VAR)
    (tmp_path / "work" / "shared" / "data").rmdir()
    with pytest.raises(DataError, match="searched.*shared/data.*ROBUSTCOMPRESS_DATA=DIR"):
        resolve_data_root()


def test_read_only_root_is_never_a_cache(tmp_path, monkeypatch):
    from robustcompress.data.cache import resolve_cache_dir

    monkeypatch.delenv("ROBUSTCOMPRESS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ro = tmp_path / "ro"
    ro.mkdir()
    assert resolve_cache_dir(None, ro) == ro / ".robustcompress-cache"
    ro.chmod(0o555)
    try:
        assert resolve_cache_dir(None, ro) == tmp_path / "xdg" / "robustcompress"
    finally:
        ro.chmod(0o755)
    assert resolve_cache_dir(tmp_path / "mine", ro) == tmp_path / "mine"


def test_missing_dataset_lists_searched_places(tmp_path):
    with pytest.raises(DataError, match=r"'fsdd' not found \(searched .*fsdd-recordings.tar"):
        load_dataset("fsdd", tmp_path)


# ------------------------------------------------------------------ limits

@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 70))
def test_stratified_first_properties(labels, n):
    y = np.array(labels)
    idx = stratified_first(y, n)
    assert len(idx) == min(n, len(y)) and np.all(np.diff(idx) > 0)
    counts = np.bincount(y[idx], minlength=5)
    avail = np.bincount(y, minlength=5)
    for c in range(5):  # the first k of each class
        assert np.array_equal(idx[y[idx] == c], np.flatnonzero(y == c)[:counts[c]])
    # balanced: a class short of the largest share is exhausted
    assert np.all((counts >= counts.max() - 1) | (counts == avail))


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 wrote CIFAR-10 (str opcodes, numpy.core names)."""
    import struct

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + s(b"|") + b"NNN" + i(-1) + i(-1) + b"K\x00tb")
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
           + b"(K\x01" + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89"
           + s(data.tobytes()) + b"tb")
    lab = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + lab + b"u."


def test_python2_style_batch():
    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    blob = _py2_batch(data, [3, 7])
    assert pickle.loads(blob, encoding="bytes")[b"labels"] == [3, 7]  # a valid pickle
    got = read_batch(blob, "py2")
    assert got["labels"] == [3, 7] and np.array_equal(got["data"], data)


def test_speech_folder_members_are_checked_against_the_list(tmp_path):
    import hashlib

    root = tmp_path / "speech_commands"
    files = {f"{w}/{s}_nohash_0.wav": _wav(np.full(16000, i, np.int16), 16000)
             for i, (w, s) in enumerate([("yes", "aaaa1111"), ("no", "bbbb2222")])}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (tmp_path / "speech_commands.members.sha256").write_text(
        "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    ds = load_dataset("speech_commands", tmp_path, cache_dir=tmp_path / "c", split="resplit")
    assert len(ds.train) + len(ds.test) == 2
    (root / "no/bbbb2222_nohash_0.wav").write_bytes(files["no/bbbb2222_nohash_0.wav"][:-2] + b"\x07\x00")
    with pytest.raises(DataError, match="member no/bbbb2222_nohash_0.wav is corrupted: expected sha256"):
        load_dataset("speech_commands", tmp_path, cache_dir=tmp_path / "c", split="resplit")


def test_safe_extract_writes_plain_files_only(tmp_path):
    arc = tmp_path / "ok.tar"
    with tarfile.open(arc, "w") as tf:
        info = tarfile.TarInfo("recordings/0_x_0.wav")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"RIFF"))
        link = tarfile.TarInfo("recordings/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="unsafe member"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out" / "recordings" / "link").exists()
