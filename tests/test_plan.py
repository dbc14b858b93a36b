"""Know the cost first: `plan_experiment` / `run --plan` list exactly the runner's units, mark
finished ones done, estimate the time within a factor of 2 on this CPU; `run` asks (or refuses
without a terminal) before a long CPU run; `run --seed N` runs another seed in its own folder."""

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from robustcompress.cli import main
from robustcompress.experiments import load_config, plan_experiment, run_experiment
from robustcompress.experiments import plan as plan_module
from robustcompress.experiments.api import list_configs

# demo.yaml shrunk: every kind of unit (metrics, clean, paper, adaptive, security, minimal), a
# trained, a stochastic, a progressive (two variants from one step) and a grid defense
TINY = {
    "name": "plantiny", "seed": 0, "threads": 1,
    "dataset": {"name": "digits", "train_limit": 600, "test_limit": 200},
    "model": {"name": "lenet5"},
    "training": {"epochs": 3, "optimizer": "adam", "lr": 0.002, "batch_size": 64},
    "defenses": [
        {"name": "pgd_at", "method": "adversarial_training",
         "params": {"eps": 0.1, "steps": 3, "step_size": 0.05, "epochs": 2}},
        {"name": "sap", "method": "sap", "params": {"frac": 1.0}},
        {"name": "pruned", "method": "prune", "params": {"rho": 0.5, "rounds": 2, "retrain_epochs": 1}},
        {"name": "q", "method": "quantize", "grid": {"bits": [3, 4]}},
    ],
    "evaluation": {
        "n_samples": 60, "batch_size": 30, "threats": [{"norm": "linf", "eps": [0.1, 0.2]}],
        "paper": [{"attack": "fgsm"}, {"attack": "pgd", "steps": 5}],
        "adaptive": True, "adaptive_eps": [0.1], "eot_samples": 2, "mc_samples": 4,
        "apgd_steps": 10, "square_queries": 50, "check_samples": 16, "check_steps": 5,
        "minimal": ["deepfool"], "security": "fmn",
    },
    "report": {"html": False},
}
# the smallest run: for the CLI tests that start one
MINI = {"name": "planmini", "threads": 1, "dataset": {"name": "digits", "train_limit": 200, "test_limit": 40},
        "model": {"name": "lenet300"}, "training": {"epochs": 1, "batch_size": 64},
        "evaluation": {"n_samples": 20, "batch_size": 20, "threats": [{"norm": "linf", "eps": [0.1]}],
                       "paper": [{"attack": "fgsm"}], "adaptive": False},
        "metrics": {"calibration": False}, "report": {"html": False}}


def write(tmp_path: Path, cfg: dict, **changes) -> Path:
    p = tmp_path / f"{cfg['name']}.yaml"
    p.write_text(yaml.safe_dump({**cfg, **changes}))
    return p


@pytest.fixture(scope="module")
def planned_run(tmp_path_factory):
    """The tiny config planned, then run (timed), then planned again."""
    tmp = tmp_path_factory.mktemp("plan")
    cfg = load_config(write(tmp, TINY, output_dir=str(tmp / "run")))
    before = plan_experiment(cfg, device="cpu")
    t0 = time.perf_counter()
    summary = run_experiment(cfg, progress=False, report=False)
    wall = time.perf_counter() - t0
    return tmp, cfg, before, summary, wall


def _kinds(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT kind, count(*) FROM units GROUP BY kind").fetchall())


def test_plan_lists_exactly_the_units_the_runner_runs(planned_run):
    tmp, cfg, before, summary, _ = planned_run
    assert before.unit_keys == summary.unit_keys  # the same evaluation units, in run order
    assert before.units == summary.units_run and before.done == 0 and summary.units_skipped == 0
    stages = {s.name: s for s in before.stages}
    assert stages["train base"].units == 1
    assert stages["defense pruned (prune)"].units == 1 and stages["defense q (quantize)"].units == 2
    # 7 variants: base, pgd_at, sap, pruned/r1, pruned/r2, q[bits=3], q[bits=4]
    assert len(summary.variants) == 7
    for kind, count in _kinds(tmp / "run" / "results.db").items():
        assert stages[f"eval {kind}"].units == count, kind
    assert stages["eval paper"].units == 7 * 2 * 2 and stages["eval adaptive"].units == 7
    assert all(s.seconds is not None and s.seconds >= 0 for s in before.stages)
    assert stages["defense pgd_at (adversarial_training)"].seconds > stages["train base"].seconds / 3


def test_finished_units_are_marked_done_and_cost_nothing(planned_run, tmp_path):
    tmp, cfg, before, _summary, _ = planned_run
    after = plan_experiment(cfg, device="cpu")
    assert after.done == after.units == before.units and after.total_seconds == 0
    # a folder where the adaptive evaluations were lost: only they are left to run
    shutil.copytree(tmp / "run", tmp_path / "copy")
    with sqlite3.connect(tmp_path / "copy" / "results.db") as conn:
        conn.execute("DELETE FROM units WHERE kind='adaptive'")
    part = plan_experiment(cfg, device="cpu", output_dir=str(tmp_path / "copy"), calibrate=False)
    left = {s.name: s.units - s.done for s in part.stages if s.units > s.done}
    assert left == {"eval adaptive": 7} and part.total_seconds is None


def test_estimate_is_within_a_factor_of_two_of_the_real_run(planned_run):
    _tmp, _cfg, before, _summary, wall = planned_run
    ratio = before.total_seconds / wall
    print(f"estimate {before.total_seconds:.1f} s, real run {wall:.1f} s, ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, (before.total_seconds, wall)


def _user_files_for(name: str, cwd: Path, monkeypatch) -> None:
    """A config that brings its own model (factory + weights the user makes beforehand, as its
    header says) is planned from a scratch folder holding the factory and freshly initialised
    weights of the right architecture: a plan needs their shapes, not their values."""
    import importlib.util

    import torch

    repo = Path(__file__).resolve().parents[1]
    model = yaml.safe_load((repo / "configs" / f"{name}.yaml").read_text())["model"]
    weights = model.get("weights")
    if "factory" not in model or weights is None or (repo / weights).is_file():
        return
    shutil.copytree(repo / "examples", cwd / "examples")
    monkeypatch.chdir(cwd)
    file, fn = model["factory"].rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("user_factory", cwd / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(getattr(module, fn)(**model.get("kwargs", {})).state_dict(), cwd / weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(list_configs()))
def test_plan_of_every_shipped_config(name, tmp_path, capsys, monkeypatch):
    _user_files_for(name, tmp_path / "cwd", monkeypatch)
    t0 = time.perf_counter()
    assert main(["run", name, "--plan", "--out", str(tmp_path / name)]) == 0
    took = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "total: about" in out and "eval clean" in out, out
    assert took < 60, f"--plan of {name} took {took:.0f} s"
    assert not (tmp_path / name).exists()  # planning writes nothing


def test_plan_prints_the_table_and_runs_nothing(tmp_path, capsys):
    assert main(["run", str(write(tmp_path, MINI, output_dir=str(tmp_path / "run"))), "--plan"]) == 0
    out = capsys.readouterr().out
    for text in ("stage", "units", "done", "work", "train base", "eval paper", "total: about", "cpu"):
        assert text in out, text
    assert not (tmp_path / "run").exists()


def test_long_cpu_run_is_refused_without_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plan_module, "CONFIRM_ABOVE_S", 0.0)  # every run counts as long
    cfg = write(tmp_path, MINI, output_dir=str(tmp_path / "run"))
    assert main(["run", str(cfg), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--yes" in err and "about" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.db").exists()
    assert main(["run", str(cfg), "--device", "cpu", "--no-progress", "--yes"]) == 0
    assert (tmp_path / "run" / "results.db").exists()


def test_seed_option_overrides_the_seed_and_the_default_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path, MINI)  # no output_dir: runs/<name>
    assert main(["run", str(cfg), "--seed", "7", "--plan"]) == 0
    assert "runs/planmini-seed7" in capsys.readouterr().out
    assert main(["run", str(cfg), "--seed", "7", "--no-progress", "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "runs" / "planmini-seed7" / "config.json").read_text())
    assert saved["seed"] == 7 and not (tmp_path / "runs" / "planmini").exists()
    assert main(["run", str(cfg), "--seed", "8", "--out", str(tmp_path / "mine"), "--plan"]) == 0
    assert str(tmp_path / "mine") in capsys.readouterr().out


def test_cascade_survivors_are_assumed_then_read_from_the_store(planned_run, tmp_path):
    """A fresh plan assumes half the points survive each cascade's first attack and says so;
    a re-plan of the run folder sizes each cascade from the variant's stored clean and lowest
    paper-protocol accuracy at that eps (none left: the later attacks cost nothing)."""
    tmp, cfg, before, _summary, _ = planned_run
    assert before.cascades == {"assumed": 7, "stored": 0}
    assert any("50% of the points survive" in n for n in before.notes)
    work = {}
    for robust in (0.0, 1.0):
        folder = tmp_path / f"robust{robust}"
        shutil.copytree(tmp / "run", folder)
        with sqlite3.connect(folder / "results.db") as conn:
            conn.execute("DELETE FROM units WHERE kind='adaptive'")
            conn.execute("UPDATE results SET robust_acc=? WHERE protocol='paper'", (robust,))
            conn.execute("UPDATE results SET clean_acc=1.0 WHERE protocol='clean'")
        part = plan_experiment(cfg, device="cpu", output_dir=str(folder), calibrate=False)
        assert part.cascades == {"assumed": 0, "stored": 7}
        assert not any("survive" in n for n in part.notes) and "stored clean" in part.notes[0]
        work[robust] = _input_passes(part, "eval adaptive")
    assert work[0.0] < _input_passes(before, "eval adaptive") < work[1.0]


def _input_passes(plan, stage: str) -> float:
    """Gradient passes x inputs of a stage (what fewer surviving points save; the work column
    counts batches, and a cascade's later batches are smaller, not fewer)."""
    jobs = next(s for s in plan.stages if s.name == stage).jobs
    return sum(j.passes * j.points * j.rows for j in jobs if j.rate == "grad")


def test_survival_shares_of_a_cascade():
    from robustcompress.experiments.plan_costs import SURVIVING, Survival, battery_jobs

    assert (Survival().first, Survival().later, Survival().assumed) == (1.0, SURVIVING, True)
    assert (Survival(0.8).first, Survival(0.8).later) == (0.8, SURVIVING)
    assert (Survival(0.3).later, Survival(0.9, 0.05).later, Survival(0.9, 0.05).assumed) == (0.3, 0.05, False)
    battery = [("apgd-ce", "apgd", {"steps": 10}), ("apgd-dlr", "apgd", {"loss": "dlr", "steps": 10})]

    def grad_steps(s):  # gradient passes x inputs
        jobs = battery_jobs(battery, 100, 50, 10, False, 1, 1, s)
        return sum(j.passes * j.points * j.rows for j in jobs if j.rate == "grad")

    assert grad_steps(None) == grad_steps(Survival())
    assert grad_steps(Survival(0.5, 0.0)) < grad_steps(Survival()) < grad_steps(Survival(1.0, 1.0))


def test_plan_prints_what_it_assumes_about_survivors(tmp_path, capsys):
    mini = {**MINI, "evaluation": {**MINI["evaluation"], "adaptive": True, "apgd_steps": 5,
                                   "square_queries": 0, "check_samples": 8, "check_steps": 2}}
    assert main(["run", str(write(tmp_path, mini, output_dir=str(tmp_path / "run"))), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "assume 50% of the points survive the first attack" in out and "69 min" in out
