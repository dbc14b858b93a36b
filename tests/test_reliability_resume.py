"""Issue 13, part 1: a unit's identity decides its rows and its randomness. Two attacks with the
same name keep two rows; configs run into one folder keep their own rows; a run killed with
SIGKILL at three different points and resumed gives a store identical to an uninterrupted run,
stochastic variants (SAP, EOT, MC verdicts, r_2, vulnerability) included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustcompress.experiments import ResultsStore, load_config, run_experiment

CONFIG = {
    "name": "resume",
    "seed": 5,
    "threads": 1,
    "dataset": {"name": "digits", "train_limit": 300},
    "model": {"name": "lenet5"},
    "training": {"epochs": 2, "optimizer": "adam", "lr": 0.003, "batch_size": 64},
    "defenses": [
        {"name": "sap", "method": "sap", "params": {"frac": 0.5}},
        {"name": "dwp", "method": "dwp", "params": {"keep": 0.5}},
        {"name": "pruned", "method": "prune", "params": {"rho": 0.5, "rounds": 1, "retrain_epochs": 1}},
    ],
    "evaluation": {
        "n_samples": 30, "batch_size": 15,
        "threats": [{"norm": "linf", "eps": [0.1]}],
        "paper": [{"attack": "fgsm"}, {"attack": "pgd", "steps": 1}, {"attack": "pgd", "steps": 5}],
        "adaptive": True, "eot_samples": 2, "mc_samples": 3, "apgd_steps": 3, "square_queries": 10,
        "check_samples": 8, "check_steps": 2, "minimal": ["deepfool"],
    },
    "metrics": {"calibration": True, "vulnerability": True, "spectral": False},
}
TIMING = ("latency", "seconds", "time")


def write(tmp_path: Path, out: Path, tag: str = "", **changes) -> Path:
    p = tmp_path / f"{out.name}{tag}.yaml"
    p.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(out), **changes}))
    return p


def dump(out: Path, units=None) -> list:
    """Every result and metric row of the store (of ``units`` if given), timings aside."""
    with ResultsStore(out / "results.db") as s:
        res, met = s.results(units=units), s.metrics(units=units)
    rows = [tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in r.items() if k != "seconds"
                         and k != "extra")) for r in res]
    rows += [(r["variant"], r["key"], r["value"]) for r in met if not any(t in r["key"] for t in TIMING)]
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    out = tmp / "A"
    summary = run_experiment(load_config(write(tmp, out)), progress=False, report=False)
    return out, summary


def test_same_attack_with_other_parameters_keeps_both_rows(uninterrupted):
    out, summary = uninterrupted
    with ResultsStore(out / "results.db") as s:
        attacks = {r["attack"] for r in s.results(protocol="paper", variant="base")}
    assert attacks == {"fgsm", "pgd[steps=1]", "pgd[steps=5]"}
    with ResultsStore(out / "results.db") as s:
        acc = {r["attack"]: r["robust_acc"] for r in s.results(protocol="paper", variant="base")}
    assert acc["pgd[steps=5]"] <= acc["pgd[steps=1]"] + 1e-9  # more steps never weaker here


def test_config_a_then_b_then_a_keeps_a_complete(uninterrupted, tmp_path):
    out_a, summary_a = uninterrupted
    out = tmp_path / "shared"
    cfg_a = write(tmp_path, out)
    first = run_experiment(load_config(cfg_a), progress=False, report=False)
    # other evaluation points: every unit is new, with the same (variant, attack, eps) as A's
    changed = {**CONFIG["evaluation"], "n_samples": 20, "adaptive": False, "minimal": []}
    run_experiment(load_config(write(tmp_path, out, "-b", evaluation=changed)), progress=False, report=False)
    again = run_experiment(load_config(cfg_a), progress=False, report=False)
    assert again.units_run == 0  # nothing redone ...
    assert dump(out, again.unit_keys) == dump(out, first.unit_keys) == dump(out_a, summary_a.unit_keys)


KILLER = r'''
import contextlib, os, signal, sys
from robustcompress.experiments import store, runner
where, n = sys.argv[2], int(sys.argv[3])
count = [0]
def maybe_die(point):
    if point == where:
        count[0] += 1
        if count[0] >= n:
            os.kill(os.getpid(), signal.SIGKILL)
orig_unit = store.ResultsStore.unit
@contextlib.contextmanager
def unit(self, *a, **k):
    with orig_unit(self, *a, **k) as w:
        yield w
        maybe_die("inside-unit")   # rows collected, not committed
    maybe_die("after-commit")
store.ResultsStore.unit = unit
orig_apply = runner.Runner.apply_defense
def apply_defense(self, *a, **k):
    out = orig_apply(self, *a, **k)
    maybe_die("after-defense")
    return out
runner.Runner.apply_defense = apply_defense
from robustcompress.cli import main
sys.exit(main(["run", sys.argv[1], "--no-progress"]))
'''


@pytest.mark.slow
def test_kill_9_at_three_points_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    out_a, summary_a = uninterrupted
    out = tmp_path / "B"
    cfg = write(tmp_path, out)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for where, n in (("after-defense", 1), ("inside-unit", 4), ("after-commit", 9)):
        proc = subprocess.run([sys.executable, str(script), str(cfg), where, str(n)], env=env,
                              capture_output=True, timeout=600)
        assert proc.returncode == -9, (where, proc.returncode, proc.stderr.decode()[-2000:])
    resumed = run_experiment(load_config(cfg), progress=False, report=False)
    assert resumed.units_skipped > 0 and resumed.unit_keys == summary_a.unit_keys
    assert dump(out, resumed.unit_keys) == dump(out_a, summary_a.unit_keys)


def test_a_second_run_on_the_same_folder_stops_at_once_naming_the_first(tmp_path):
    from robustcompress.experiments.lock import output_lock

    out = tmp_path / "busy"
    cfg = write(tmp_path, out)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from robustcompress.experiments.lock import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "robustcompress.cli", "run", str(cfg), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"pid {holder.pid}" in proc.stderr
        assert not (out / "results.db").exists()  # nothing was started, nothing overwritten
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel released the killed holder's lock
        pass


def test_a_corrupted_training_state_is_refused_naming_the_file(tmp_path):
    from robustcompress.data import load_dataset
    from robustcompress.errors import DataError
    from robustcompress.models import build_model
    from robustcompress.training import TrainConfig, fit

    ds = load_dataset("digits", train_limit=100, test_limit=50)
    cfg = TrainConfig(epochs=1, batch_size=50)
    fit(build_model("lenet300", ds.info), ds, cfg, checkpoint_dir=tmp_path, progress=False)
    state = next(tmp_path.glob("state-e*.safetensors"))
    data = bytearray(state.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: safetensors itself would not notice
    state.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{state.name}.*modified or corrupted"):
        fit(build_model("lenet300", ds.info), ds, TrainConfig(epochs=2, batch_size=50),
            checkpoint_dir=tmp_path, progress=False)
