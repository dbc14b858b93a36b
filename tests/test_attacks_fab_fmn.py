"""FAB and FMN (issue 19): exact minimal distances on linear models, box, batching, seeds, targets;
and the projection FAB relies on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.fab import project_hyperplane_box
from robustcompress.errors import UserInputError

MINIMAL = [("fab", {}), ("fab-t", {"n_target_classes": 2}), ("fmn", {})]


def _linear(classes: int, d: int = 20, seed: int = 0):
    """A linear model and inputs in the middle of the box (the box does not bind)."""
    torch.manual_seed(seed)
    lin = nn.Linear(d, classes)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    model = nn.Sequential(lin).eval()
    x = 0.4 + 0.2 * torch.rand(16, d)
    return model, x, model(x).argmax(1).detach()


def _exact(model, x, y, norm):
    """min over classes of the distance to the hyperplane f_y = f_k (exact for linear models)."""
    w, z = model[0].weight.detach(), model(x).detach()
    out = []
    for i in range(x.shape[0]):
        dists = [(z[i, y[i]] - z[i, k]) / ((w[y[i]] - w[k]).abs().sum() if norm == "linf"
                                             else (w[y[i]] - w[k]).norm())
                 for k in range(w.shape[0]) if k != y[i]]
        out.append(min(dists))
    return torch.stack(out)


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name,kw", MINIMAL)
@pytest.mark.parametrize("search", [20, 0])
def test_exact_minimal_distance_on_linear_model(norm, name, kw, search):
    model, x, y = _linear(3)
    threat = ThreatModel(norm=norm, eps=0.0, bounds=(0.0, 1.0))
    r = run_attack(name, model, x, y, threat, generator=_gen(), boundary_search=search, **kw)
    ref = _exact(model, x, y, norm)
    assert bool(r.success.all())
    # without the final search FAB ends within its beta step of the boundary, FMN within gamma
    tol = 0.02 if search else 0.06
    assert torch.allclose(r.extra["min_norm"], ref, rtol=tol)
    assert bool((r.extra["min_norm"] >= ref * (1 - 1e-4)).all())  # nothing beats the exact distance


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fmn_logit_difference_on_two_classes(norm):
    model, x, y = _linear(2)
    threat = ThreatModel(norm=norm, eps=0.0, bounds=(0.0, 1.0))
    r = run_attack("fmn", model, x, y, threat, loss="cw")
    assert torch.allclose(r.extra["min_norm"], _exact(model, x, y, norm), rtol=0.02)
    with pytest.raises(UserInputError, match="DLR"):
        run_attack("fmn", model, x, y, threat)  # DLR needs 3 classes: the message names the fix


def _small_cnn():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    x = torch.rand(10, 1, 8, 8)
    x[:, :, :2] = 0.0  # on the box face, where the box binds
    return model, x, model(x).argmax(1).detach()


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
@pytest.mark.parametrize("name,kw", [("fab", {"restarts": 2}), ("fab-t", {"n_target_classes": 3}), ("fmn", {})])
def test_box_batch_invariance_and_seed(norm, eps, name, kw):
    model, x, y = _small_cnn()
    threat = ThreatModel(norm=norm, eps=eps, bounds=(0.0, 1.0))
    whole = run_attack(name, model, x, y, threat, generator=_gen(), steps=20, **kw)
    split = run_attack(name, model, x, y, threat, generator=_gen(), steps=20, batch_size=4, **kw)
    again = run_attack(name, model, x, y, threat, generator=_gen(), steps=20, **kw)
    assert bool(((whole.x_adv >= 0) & (whole.x_adv <= 1)).all())
    assert torch.equal(whole.x_adv, again.x_adv) and torch.equal(whole.success, again.success)
    assert torch.equal(whole.success, split.success)
    # the same up to the model's own rounding across batch sizes (about 1e-8 in the logits here)
    assert torch.allclose(whole.x_adv, split.x_adv, atol=1e-4)
    assert torch.allclose(whole.extra["min_norm"], split.extra["min_norm"], rtol=1e-3)
    assert bool((whole.norm[whole.success] <= eps * (1 + 1e-5)).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name,kw", [("fab", {}), ("fmn", {"loss": "cw"})])
def test_targeted_reaches_target(norm, name, kw):
    model, x, y = _linear(4)
    target = (model(x).argsort(dim=1)[:, 0]).detach()  # the least likely class
    threat = ThreatModel(norm=norm, eps=0.0, bounds=(0.0, 1.0), targeted=True)
    r = run_attack(name, model, x, target, threat, generator=_gen(), **kw)
    assert bool(r.success.all())
    assert torch.equal(model(r.x_adv).argmax(1), target)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_exact_on_box(norm):
    """On the hyperplane, in the box, and no random feasible point on the plane is closer."""
    torch.manual_seed(0)
    t = torch.rand(100, 15)
    t[:, :4], t[:, 4:8] = 0.0, 1.0
    w, c = torch.randn(100, 15), torch.randn(100)
    d = project_hyperplane_box(t, w, c, norm, 0.0, 1.0)
    on_plane = ((w * d).sum(1) - c).abs() < 1e-4
    assert int(on_plane.sum()) > 30
    assert bool((((t + d) >= -1e-6) & ((t + d) <= 1 + 1e-6)).all(1)[on_plane].all())
    size = (lambda v: v.abs().amax(1)) if norm == "linf" else (lambda v: v.norm(dim=1))
    for _ in range(300):
        dz = torch.rand(100, 15) - t  # segment to a random box point, cut at the plane
        s = c / (w * dz).sum(1)
        ok = (s > 0) & (s <= 1) & on_plane
        assert not bool((ok & (size(s[:, None] * dz) < size(d) - 1e-5)).any())


def test_parameter_errors_name_the_fix():
    model, x, y = _linear(3)
    threat = ThreatModel(norm="l2", eps=0.0, bounds=(0.0, 1.0))
    with pytest.raises(UserInputError, match="schedule"):
        run_attack("fmn", model, x, y, threat, schedule="step")
    with pytest.raises(UserInputError, match="beta"):
        run_attack("fab", model, x, y, threat, beta=0.0)
    with pytest.raises(UserInputError, match="fab-t picks its own targets"):
        run_attack("fab-t", model, x, y, ThreatModel(norm="l2", eps=0.0, bounds=(0.0, 1.0), targeted=True))


# ---------------------------------------------------------------- the standard protocol


def test_standard_protocol_no_higher_than_apgd_ce(digits, digits_mlp):
    from robustcompress.attacks.adaptive import evaluate_robustness
    from robustcompress.attacks.standard import evaluate_standard, standard_battery

    x, y = digits.test.x[:60], digits.test.y[:60]
    threat = ThreatModel.from_spec("linf", 0.1, digits.info)
    kw = dict(checks=False, progress=False, apgd_steps=20, square_queries=200)
    alone = evaluate_robustness(digits_mlp, x, y, threat, generator=_gen(0),
                                attacks=[("apgd-ce", "apgd", {"loss": "ce", "steps": 20})], **kw)
    std = evaluate_standard(digits_mlp, x, y, threat, generator=_gen(0), **kw)
    assert [a.label for a in std.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert std.settings["protocol"] == "standard"
    assert std.robust_accuracy <= alone.robust_accuracy
    rand = [label for label, _, _ in standard_battery(threat, 10, stochastic=True)]
    assert rand == ["apgd-ce", "apgd-dlr"]
    assert [lab for lab, _, _ in standard_battery(threat.with_eps(0.1), 3, False)] == ["apgd-ce", "fab-t", "square"]


def test_protocol_option_selects_standard(digits, digits_mlp):
    from robustcompress.experiments.protocols.adaptive import adaptive_evaluation

    part = digits.test.sample(30)
    kw = dict(device="cpu", seed=0, norm="linf", eps="0.1", checks=False, progress=False,
              apgd_steps=5, square_queries=50)
    rep = adaptive_evaluation(digits_mlp, part, digits.info, protocol="standard", **kw)
    assert rep.settings["protocol"] == "standard"
    assert [a.label for a in rep.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    with pytest.raises(UserInputError, match="--protocol"):
        adaptive_evaluation(digits_mlp, part, digits.info, protocol="autoattack", **kw)


def _small_run(tmp_path, name: str, evaluation: dict, **extra):
    """A 2-epoch LeNet-300 on 300 digits evaluated with ``evaluation``: (config, standard rows,
    report data)."""
    import yaml

    from robustcompress.experiments import load_config, run_experiment
    from robustcompress.experiments.report_data import gather
    from robustcompress.experiments.store import ResultsStore

    cfg = {"name": name, "seed": 1, "threads": 1, "output_dir": str(tmp_path / "run"),
           "dataset": {"name": "digits", "train_limit": 300},
           "model": {"name": "lenet300"}, "training": {"epochs": 2, "optimizer": "adam", "lr": 0.003},
           "evaluation": evaluation, "metrics": {"calibration": False, "spectral": False}, **extra}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(tmp_path / "c.yaml")
    summary = run_experiment(loaded, progress=False, report=False)
    with ResultsStore(tmp_path / "run" / "results.db") as store:
        rows = store.results(protocol="standard", units=summary.unit_keys)
        data = gather(store, loaded, summary.variants, summary.unit_keys)
    return cfg, rows, data


def test_config_standard_protocol_gets_its_own_leaderboard_column(tmp_path):
    """evaluation.standard: a `standard` row per variant and eps, shown as its own column, no
    higher than the adaptive worst case's APGD-CE-only counterpart would allow (<= clean)."""
    from robustcompress.experiments.report import leaderboard

    _, rows, data = _small_run(tmp_path, "std", {
        "n_samples": 30, "batch_size": 30, "threats": [{"norm": "linf", "eps": [0.1]}],
        "paper": [{"attack": "fgsm"}], "adaptive": False, "standard": True})
    assert {r["attack"] for r in rows} >= {"apgd-ce", "apgd-t", "fab-t", "square", "worst-case"}
    header, board = leaderboard(data)
    assert "@0.1 standard %" in header
    worst = next(r for r in rows if r["attack"] == "worst-case")
    assert worst["robust_acc"] <= worst["clean_acc"]


def test_security_curves_from_minimal_distances(tmp_path):
    """evaluation.security: per-sample minimal distances per threat norm, a curve that starts at
    the clean accuracy and falls to 0, and a security-curve figure in the report."""
    import yaml

    from robustcompress.experiments import load_config, run_experiment
    from robustcompress.experiments.security import eps_grid, robust_accuracy_curve
    from robustcompress.experiments.store import ResultsStore

    cfg = {"name": "sec", "seed": 1, "threads": 1, "output_dir": str(tmp_path / "run"),
           "dataset": {"name": "digits", "train_limit": 300},
           "model": {"name": "lenet300"}, "training": {"epochs": 2, "optimizer": "adam", "lr": 0.003},
           "evaluation": {"n_samples": 30, "batch_size": 30, "threats": [{"norm": "linf", "eps": [0.1]}],
                          "paper": [], "adaptive": False, "standard": True, "security": "fmn"},
           "metrics": {"calibration": False, "spectral": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    summary = run_experiment(load_config(tmp_path / "c.yaml"), progress=False)
    with ResultsStore(tmp_path / "run" / "results.db") as store:
        sec = store.results(protocol="security", units=summary.unit_keys)
        std = store.results(protocol="standard", units=summary.unit_keys)
    (row,) = sec
    dist = row["extra"]["distances"]
    assert len(dist) == 30 and row["norm"] == "linf"
    assert all(d is None or 0 <= d <= 1.0 + 1e-6 for d in dist)
    curve = robust_accuracy_curve(dist, eps_grid(dist))
    clean = next(r for r in std if r["attack"] == "worst-case")["clean_acc"]
    assert abs(curve[0] - clean) < 1e-6 and curve[-1] <= curve[0] and curve == sorted(curve, reverse=True)
    # FMN's curve at the config eps is an upper bound of what the standard battery found there
    at_eps = robust_accuracy_curve(dist, [0.1])[0]
    worst = next(r for r in std if r["attack"] == "worst-case")["robust_acc"]
    assert worst <= at_eps + 0.1
    assert (tmp_path / "run" / "plots" / "security_curves.png").stat().st_size > 1000


def test_security_table_cli(tmp_path, capsys):
    from robustcompress.cli import main
    from robustcompress.experiments.security import security_table
    from robustcompress.experiments.store import ResultRow, ResultsStore

    with ResultsStore(tmp_path / "results.db") as store:
        with store.unit("u", "security", "v") as w:
            w.add_result(ResultRow("v[theta=0.9]", "fmn", "security", "linf", 0.0, "curve", 0, 4,
                                   extra={"distances": [0.0, 0.1, 0.2, None]}))
        rows = store.results()
    header, body = security_table(rows, points=3)
    assert header[3:] == ["0", "0.11", "0.21"] and body[0][3:] == ["75", "50", "25"]
    assert main(["results", str(tmp_path), "--security"]) == 0
    assert "v[theta=0.9]" in capsys.readouterr().out


def test_standard_protocol_on_chosen_eps_and_a_stratified_subset(tmp_path):
    """evaluation.standard_eps / standard_samples: the standard units run only at the chosen eps,
    on a class-stratified subset of the evaluation points, and the column says how many; a
    subset larger than the evaluation points or an eps that no threat has is refused."""
    import yaml

    from robustcompress.errors import ConfigError
    from robustcompress.experiments import load_config
    from robustcompress.experiments.report import leaderboard

    ev = {"n_samples": 30, "batch_size": 30, "threats": [{"norm": "linf", "eps": [0.1, 0.2]}],
          "paper": [{"attack": "fgsm"}], "adaptive": False, "standard": True,
          "standard_eps": [0.2], "standard_samples": 20}
    cfg, rows, data = _small_run(tmp_path, "stdsub", ev, report={"main_eps": 0.2})
    assert {r["eps_label"] for r in rows} == {"0.2"} and {r["n"] for r in rows} == {20}
    assert "@0.2 standard % (n=20)" in leaderboard(data)[0]
    for bad, match in (({"standard_samples": 31}, "standard_samples"), ({"standard_eps": [0.3]}, "standard_eps")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "evaluation": {**ev, **bad}}))
        with pytest.raises(ConfigError, match=match):
            load_config(tmp_path / "bad.yaml")
