"""Runner: end to end on digits, resume after kill -9 with identical results and no duplicates,
report files (HTML valid, every image exists; rendered by Chromium when it is installed)."""

import html.parser
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from robustcompress.experiments import ResultsStore, load_config, run_experiment
from robustcompress.experiments.store import ResultRow

CONFIG = {
    "name": "tiny",
    "seed": 3,
    "dataset": {"name": "digits", "train_limit": 400},
    "model": {"name": "lenet300"},
    "training": {"epochs": 2, "optimizer": "adam", "lr": 0.003, "batch_size": 64},
    "defenses": [
        {"name": "sap", "method": "sap", "params": {"frac": 1.0}},
        {"name": "dwp", "method": "dwp", "grid": {"keep": [0.5, 0.2]}},
    ],
    "evaluation": {
        "n_samples": 60, "batch_size": 25, "runs": 2,
        "threats": [{"norm": "linf", "eps": [0.1, 0.3]}],
        "paper": [{"attack": "fgsm"}, {"attack": "pgd", "steps": 5}],
        "adaptive": False, "mc_samples": 4,
    },
    "metrics": {"calibration": True, "compression": True},
}


def write_config(tmp_path, out, **changes):
    cfg = {**CONFIG, "output_dir": str(out), **changes}
    p = tmp_path / f"{Path(out).name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def rows(out):
    with ResultsStore(Path(out) / "results.db") as s:
        res = s.results()
    keep = ("variant", "attack", "protocol", "norm", "eps_label", "run", "n", "robust_acc", "fooled_any",
            "clean_acc")
    return sorted(tuple(r[k] for k in keep) for r in res)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    out = tmp / "A"
    summary = run_experiment(load_config(write_config(tmp, out)), progress=False)
    return out, summary


def test_end_to_end_rows_and_report(full_run):
    out, summary = full_run
    assert summary.variants == ["base", "sap", "dwp[keep=0.5]", "dwp[keep=0.2]"]
    r = rows(out)
    # 4 variants x (1 clean + 2 attacks x 2 eps x 2 runs)
    assert len(r) == 4 * (1 + 2 * 2 * 2)
    by = {(v, a, e, run): acc for v, a, p, n, e, run, _, acc, _, _ in r}
    # a stronger attack never does better than FGSM by much, and larger eps hurts
    assert by[("base", "pgd", "0.3", 0)] <= by[("base", "fgsm", "0.3", 0)] + 0.05
    assert by[("base", "fgsm", "0.3", 0)] <= by[("base", "fgsm", "0.1", 0)] + 1e-9
    # a deterministic attack on a deterministic model: repeated runs identical; PGD's random
    # start is seeded per run, so its runs may differ
    assert by[("base", "fgsm", "0.1", 0)] == by[("base", "fgsm", "0.1", 1)]
    clean = {v: acc for v, a, p, *_rest, acc, _f, _c in r if p == "clean"}
    assert clean["base"] > 0.8
    for name in ("report.md", "report.html", "report.json", "plots/acc_vs_eps_fgsm.png", "plots/pareto.png",
                 "plots/calibration.png"):
        assert (out / name).exists(), name


class _Checker(html.parser.HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def test_html_report_is_well_formed_and_images_exist(full_run):
    out, _ = full_run
    text = (out / "report.html").read_text()
    c = _Checker()
    c.feed(text)
    assert not c.errors and not c.stack, (c.errors, c.stack)
    assert len(c.images) >= 3
    for src in c.images:
        assert (out / src).stat().st_size > 1000, src
    assert "paper protocol" in text and "Leaderboard" in text


def _chromium(tmp_path, *args):
    """Headless Chromium with a throwaway profile; returns stdout."""
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


# appended to a copy of the report: after the load event, each image's src and natural width
# (0 = broken) go into an attribute that --dump-dom prints
_IMAGE_PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
                "JSON.stringify(Array.from(document.images, i => [i.getAttribute('src'), "
                "i.complete ? i.naturalWidth : 0]))));</script>")


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (Debian package 'chromium'; .ci/run installs it)")
def test_html_report_renders_in_headless_chromium(full_run, tmp_path):
    import json

    out, _ = full_run
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}",
              (out / "report.html").resolve().as_uri())
    from PIL import Image

    img = Image.open(shot).convert("L")
    hist = img.histogram()
    assert img.size == (1200, 3000)
    # a rendered page is not blank: a good share of non-white pixels (text, tables, plots)
    assert sum(hist[:200]) / sum(hist) > 0.02
    # every image loaded: the same page (images resolved against the run folder) with a probe
    page = (out / "report.html").read_text()
    base = f'<base href="{out.resolve().as_uri()}/">'
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + base, 1).replace("</body>", _IMAGE_PROBE + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    parser = html.parser.HTMLParser()
    found = {}
    parser.handle_starttag = lambda tag, attrs: found.update(dict(attrs)) if tag == "body" else None
    parser.feed(dom)
    images = json.loads(found["data-images"])
    assert len(images) >= 3
    broken = [src for src, width in images if not width]
    assert not broken, f"images that did not load in Chromium: {broken}"


def _done_units(db):
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(str(db), timeout=5) as c:
            return c.execute("SELECT count(*) FROM units").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_minus_9_then_rerun_gives_identical_results_without_duplicates(full_run, tmp_path):
    out_a, _ = full_run
    out_b = tmp_path / "B"
    cfg_path = write_config(tmp_path, out_b)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustcompress.cli", "run", str(cfg_path), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = out_b / "results.db"
    deadline = time.time() + 600
    while _done_units(db) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed; make the config larger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _done_units(db)
    assert 0 < killed_at
    summary = run_experiment(load_config(cfg_path), progress=False)
    assert summary.units_skipped >= killed_at  # finished work was not redone
    assert rows(out_b) == rows(out_a)  # identical results, no duplicated rows


def test_store_unit_is_atomic(tmp_path):
    with ResultsStore(tmp_path / "r.db") as s:
        with pytest.raises(RuntimeError):
            with s.unit("u1", "paper", "v") as w:
                w.add_result(ResultRow("v", "fgsm", "paper", "linf", 0.1, "0.1", 0, 10, robust_acc=0.5))
                raise RuntimeError("crash inside the unit")
        assert not s.is_done("u1") and s.results() == []
        with s.unit("u1", "paper", "v") as w:
            w.add_result(ResultRow("v", "fgsm", "paper", "linf", 0.1, "0.1", 0, 10, robust_acc=0.5))
        with s.unit("u1", "paper", "v") as w:  # re-running a unit replaces, never duplicates
            w.add_result(ResultRow("v", "fgsm", "paper", "linf", 0.1, "0.1", 0, 10, robust_acc=0.5))
        assert s.is_done("u1") and len(s.results()) == 1


def test_paper_transfer_item_defaults_to_transfer_from_and_crafts_the_named_attack(tmp_path):
    # transfer from the base model to itself with FGSM is white-box FGSM: same robust accuracy
    ev = {**CONFIG["evaluation"], "runs": 1, "n_samples": 30,
          "paper": [{"attack": "fgsm"}, {"attack": "transfer", "craft": "fgsm"}]}
    cfg = write_config(tmp_path, tmp_path / "T", defenses=[{"name": "dwp", "method": "dwp",
                                                           "params": {"keep": 0.5}}],
                       evaluation=ev, metrics={"calibration": False, "compression": False})
    run_experiment(load_config(cfg), progress=False)
    by = {(v, a, e): acc for v, a, p, n, e, run, _, acc, _, _ in rows(tmp_path / "T") if p == "paper"}
    for eps in ("0.1", "0.3"):
        assert by[("base", "transfer", eps)] == by[("base", "fgsm", eps)]
        assert ("dwp", "transfer", eps) in by



def test_evaluation_never_changes_a_model_not_even_a_batchnorm_surrogate(tmp_path, monkeypatch):
    # The base is evaluated first and its transfer attacks craft on `indep`, a BN model fresh from
    # training (left in train mode by fit): every variant must be in eval mode before any unit
    # runs, or crafting updates indep's BN running statistics (seen on CIFAR-10: indep's own clean
    # accuracy fell from 43% to 13%).
    import torch

    from robustcompress.experiments.runner import Runner

    buffers = {}
    original = Runner.evaluate_all

    def spy(self, variants, store):
        for v in variants:
            buffers[v.label] = {k: b.clone() for k, b in v.model.named_buffers()}
        original(self, variants, store)
        for v in variants:
            buffers[v.label] = [torch.equal(b, dict(v.model.named_buffers())[k])
                                for k, b in buffers[v.label].items()]

    monkeypatch.setattr(Runner, "evaluate_all", spy)
    ev = {**CONFIG["evaluation"], "runs": 1, "n_samples": 60,
          "threats": [{"norm": "linf", "eps": [0.3]}],
          "paper": [{"attack": "transfer", "craft": "fgsm"}],
          "transfer_from": "indep", "adaptive": True, "apgd_steps": 5, "square_queries": 20,
          "check_samples": 20, "check_steps": 3}
    cfg = write_config(tmp_path, tmp_path / "B", evaluation=ev,
                       model={"name": "vgg", "kwargs": {"config": [8, "M", 16, "M"], "hidden": [16]}},
                       defenses=[{"name": "indep", "method": "independent", "params": {"epochs": 1}}],
                       metrics={"calibration": False, "compression": False, "spectral": False})
    run_experiment(load_config(cfg), progress=False)
    assert set(buffers) == {"base", "indep"}
    assert all(all(same) for same in buffers.values()), buffers


def test_result_neutral_training_options_retrain_nothing(full_run, tmp_path):
    """data_on_device gives bit-identical models, so setting it (for the base or one defense)
    keeps every unit's key: a re-run of a finished folder runs nothing. A real recipe change
    (the learning rate) is another base model and retrains."""
    out_a, _ = full_run
    out = tmp_path / "A"
    shutil.copytree(out_a, out)
    defenses = [{**CONFIG["defenses"][0], "training": {"data_on_device": False}}, CONFIG["defenses"][1]]
    neutral = {**CONFIG["training"], "data_on_device": True}
    summary = run_experiment(load_config(write_config(tmp_path, out, training=neutral, defenses=defenses)),
                             progress=False)
    assert summary.units_run == 0 and summary.units_skipped > 0
    assert rows(out) == rows(out_a)
    changed = {**CONFIG["training"], "lr": 0.002}
    from robustcompress.experiments.runner import Runner

    keys = [Runner(load_config(write_config(tmp_path, out, training=t)), progress=False).base_key()
            for t in (CONFIG["training"], neutral, changed)]
    assert keys[0] == keys[1] != keys[2]
