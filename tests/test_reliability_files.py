"""Bad files end in one clear error (or, for derived data, a warning and a rebuild), never a raw
traceback or a silently wrong result: checkpoints (checksums, NaN weights, foreign JSON, write
failures), the decoded-data cache, and the output-folder lock (issue 13)."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robustcompress.data import load_dataset
from robustcompress.errors import DataError, UserInputError
from robustcompress.models import build_model
from robustcompress.training import checkpoint as ck
from robustcompress.training import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def info():
    return load_dataset("digits").info


@pytest.fixture
def saved(tmp_path, info) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("lenet300", info), tmp_path / "m")


def _flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _nan_rewrite(st: Path) -> None:
    state = load_file(str(st))
    state["fc2.weight"][0, 0] = float("nan")
    save_file(state, str(st), metadata={"format": ck.FORMAT})


# ----------------------------------------------------------------------------- checksums

@pytest.mark.parametrize("tamper", [
    pytest.param(lambda st: _flip(st, 3), id="header-flip-safetensors-rejects"),
    pytest.param(lambda st: _flip(st, st.stat().st_size - 5, 0x01), id="tensor-data-flip"),
    pytest.param(_nan_rewrite, id="nan-rewritten-json-unchanged"),
    pytest.param(lambda st: st.write_bytes(st.read_bytes()[:-100]), id="truncated"),
])
def test_modified_weights_are_refused(saved, tamper):
    st = saved.with_suffix(".safetensors")
    tamper(st)
    with pytest.raises(DataError, match="modified or corrupted after they were written") as e:
        load_checkpoint(saved)
    assert str(st) in str(e.value) and "re-create it" in str(e.value)


def test_checkpoint_records_sha256_and_old_ones_still_load(saved):
    doc = json.loads(saved.with_suffix(".json").read_text())
    assert len(doc["weights_sha256"]) == 64
    del doc["weights_sha256"]  # a checkpoint written before checksums existed
    saved.with_suffix(".json").write_text(json.dumps(doc))
    assert load_checkpoint(saved).robustcompress_meta["spec"]["model"] == "lenet300"


def _nan_saved(tmp_path, info) -> Path:
    m = build_model("lenet300", info)
    with torch.no_grad():
        m.fc2.weight[3, 1] = float("nan")
    return save_checkpoint(m, tmp_path / "nan")


def _inf_old_json(tmp_path, info) -> Path:
    stem = save_checkpoint(build_model("lenet300", info), tmp_path / "old")
    doc = json.loads(stem.with_suffix(".json").read_text())
    del doc["weights_sha256"]
    stem.with_suffix(".json").write_text(json.dumps(doc))
    st = stem.with_suffix(".safetensors")
    state = load_file(str(st))
    state["fc2.weight"][0, 0] = float("inf")
    save_file(state, str(st), metadata={"format": ck.FORMAT})
    return stem


@pytest.mark.parametrize("make", [_nan_saved, _inf_old_json], ids=["nan-saved", "inf-no-recorded-hash"])
def test_non_finite_weights_are_refused(tmp_path, info, make):
    stem = make(tmp_path, info)
    with pytest.raises(DataError, match=r"NaN or inf.*fc2\.weight") as e:
        load_checkpoint(stem)
    assert str(stem.with_suffix(".safetensors")) in str(e.value)


# ----------------------------------------------------------------------------- foreign JSON

def _spec(info, **over) -> dict:
    spec = build_model("lenet300", info).robustcompress_spec
    return json.loads(json.dumps({**spec, **over}))


FOREIGN = {
    "no-spec": lambda info: {"format": ck.FORMAT, "format_version": 1},
    "json-list": lambda info: [1, 2, 3],
    "json-string": lambda info: "model",
    "spec-not-a-dict": lambda info: {"format": ck.FORMAT, "spec": "lenet300"},
    "spec-without-info": lambda info: {"format": ck.FORMAT, "spec": {"model": "lenet300"}},
    "unknown-model": lambda info: {"format": ck.FORMAT, "spec": _spec(info, model="nosuchnet")},
    "unknown-defense": lambda info: {"format": ck.FORMAT, "spec": _spec(info),
                                     "defenses": [{"name": "nosuchdefense", "params": {}}]},
    "defenses-not-a-list": lambda info: {"format": ck.FORMAT, "spec": _spec(info), "defenses": 3},
}


@pytest.mark.parametrize("case", [*FOREIGN, "binary"])
def test_checkpoint_json_that_is_not_ours(saved, info, case):
    js = saved.with_suffix(".json")
    if case == "binary":
        js.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00" + bytes(range(256)))
    else:
        js.write_text(json.dumps(FOREIGN[case](info)))
    with pytest.raises(DataError) as e:
        load_checkpoint(saved)
    assert str(js) in str(e.value)


def test_read_checkpoint_meta_validates_the_spec(saved):
    saved.with_suffix(".json").write_text(json.dumps({"format": ck.FORMAT, "spec": {"info": 3}}))
    with pytest.raises(DataError, match="spec"):
        ck.read_checkpoint_meta(saved)


# ----------------------------------------------------------------------------- write failures

def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_replace(src, dst):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


WRITERS = {
    "save_checkpoint": lambda p, info: save_checkpoint(build_model("lenet300", info), p / "m"),
    "atomic_save_tensors": lambda p, info: ck.atomic_save_tensors({"w": torch.ones(3)},
                                                                  p / "w.safetensors"),
    "atomic_save_json": lambda p, info: ck.atomic_save_json({"a": 1}, p / "a.json"),
    "atomic_write_bytes": lambda p, info: ck.atomic_write_bytes(p / "b.bin", b"x" * 1000),
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("failure", ["disk-full", "read-only-rename", "chmod-read-only"])
def test_write_failures_are_one_clear_error_and_leave_no_file(tmp_path, monkeypatch, info, writer,
                                                               failure):
    out = tmp_path / "runs" / "x"
    out.mkdir(parents=True)
    if failure == "chmod-read-only":
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions; the monkeypatched cases cover this")
        out.chmod(0o555)
        want = "Permission denied"
    elif failure == "disk-full":
        monkeypatch.setattr(os, "fsync", _fail_fsync)
        want = "No space left on device"
    else:
        monkeypatch.setattr(os, "replace", _fail_replace)
        want = "Read-only file system"
    try:
        with pytest.raises(DataError, match=f"cannot write {out}.*{want}.*choose another --out"):
            WRITERS[writer](out, info)
    finally:
        out.chmod(0o755)
    assert list(out.iterdir()) == []  # neither the final name nor a temporary file


# ----------------------------------------------------------------------------- data cache

def _entry_file(cache: Path, name: str) -> Path:
    (entry,) = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("mnist-")]
    return entry / name


def _data_offset(path: Path) -> int:
    return path.stat().st_size - np.load(path, mmap_mode="r").nbytes


CACHE_DAMAGE = {
    "image-byte-flipped": ("x_train.npy", lambda p: _flip(p, _data_offset(p) + 14 * 28 + 14)),
    "label-changed": ("y_train.npy", lambda p: _flip(p, _data_offset(p), 0x01)),
    "truncated": ("x_test.npy", lambda p: p.write_bytes(p.read_bytes()[:1000])),
}


@pytest.mark.parametrize("case", list(CACHE_DAMAGE))
def test_corrupted_cache_file_is_discarded_and_rebuilt(tmp_path, data_root, case):
    name, damage = CACHE_DAMAGE[case]
    kw = dict(cache_dir=tmp_path, train_limit=300, test_limit=100)
    first = load_dataset("mnist", data_root, **kw)
    path = _entry_file(tmp_path, name)
    damage(path)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}.*(modified|corrupted).*rebuilt"):
        again = load_dataset("mnist", data_root, **kw)
    assert not again.extra["cache_hit"]
    for split in ("train", "test"):
        assert torch.equal(getattr(again, split).x, getattr(first, split).x)
        assert torch.equal(getattr(again, split).y, getattr(first, split).y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = load_dataset("mnist", data_root, **kw)
    assert third.extra["cache_hit"] and torch.equal(third.train.x, first.train.x)


# ----------------------------------------------------------------------------- output lock

HOLDER = """
import sys, time
from robustcompress.experiments.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_fails_at_once_and_a_killed_holder_does_not_block(tmp_path):
    from robustcompress.experiments.lock import output_lock

    folder = tmp_path / "runs" / "x"
    p = _holder(folder)
    try:
        t0 = time.monotonic()
        with pytest.raises(UserInputError, match=rf"{folder} is in use by robustcompress run "
                           rf"\(pid {p.pid} on .*, since \d\d:\d\d:\d\d\); wait for it to finish "
                           "or use another --out"):
            with output_lock(folder):
                pass
        assert time.monotonic() - t0 < 2.0
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (folder / ".lock").exists()  # the killed holder's stale file stays, and does not block
    with output_lock(folder):
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()


def test_second_holder_in_the_same_process_fails(tmp_path):
    from robustcompress.experiments.lock import output_lock

    with output_lock(tmp_path):
        with pytest.raises(UserInputError, match=f"pid {os.getpid()}"):
            with output_lock(tmp_path):
                pass
    with output_lock(tmp_path):  # released on exit
        pass


def test_without_flock_an_exclusive_lock_file_is_used(tmp_path, monkeypatch):
    from robustcompress.experiments import lock

    monkeypatch.setattr(lock, "fcntl", None)
    with lock.output_lock(tmp_path):
        with pytest.raises(UserInputError, match=r"pid \d+.*delete .*\.lock"):
            with lock.output_lock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    with lock.output_lock(tmp_path):
        pass
