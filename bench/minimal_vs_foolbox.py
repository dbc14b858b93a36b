"""Minimal-perturbation attacks (DeepFool-L2, C&W-L2): our distances and times against Foolbox 3.

Trains a LeNet-5 on a slice of MNIST (seeded), takes the first ``--points`` correctly classified
test points (class-stratified) and runs, on the same model and points:

* ours with ``boundary_search=0`` (the original attacks) and with the default line search to
  the boundary (20 bisection steps); the search is timed on its own too;
* Foolbox 3's ``L2DeepFoolAttack`` and ``L2CarliniWagnerAttack`` with the same settings
  (DeepFool: 50 steps, 10 candidates, overshoot 0.02, logit loss; C&W: 9 binary-search steps,
  ``--cw-steps`` Adam steps, lr 0.01, c0 1e-3, kappa 0, abort early), raw outputs
  (``epsilons=None``).

Printed per attack: success rates, and over the points both sides break, the mean and median of
the per-point L2 ratio ours / Foolbox and the ratio of the mean distances; wall-clock times and
their ratio. Foolbox is not a dependency of the project: put it on ``PYTHONPATH`` (e.g.
``pip install --target /tmp/foolbox-deps foolbox``); without it only ours are reported.

Usage: OMP_NUM_THREADS=1 python bench/minimal_vs_foolbox.py [--points 100] [--cw-steps 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time

import torch

from robustcompress.attacks.boundary import tighten_to_boundary
from robustcompress.attacks.cw import cw_l2_perturb, margin
from robustcompress.attacks.deepfool import deepfool_perturb
from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit


def trained_lenet(epochs: int, train_limit: int):
    torch.manual_seed(0)
    ds = load_dataset("mnist", train_limit=train_limit, test_limit=2000)
    model = build_model("lenet5", ds.info)
    fit(model, ds, TrainConfig(epochs=epochs, batch_size=64, seed=0), progress=False)
    return model.eval().requires_grad_(False), ds


def correct_points(model, ds, n: int):
    test = ds.test.sample(4 * n)
    with torch.no_grad():
        ok = model(test.x).argmax(1) == test.y
    return test.x[ok][:n], test.y[ok][:n], float(ok.float().mean())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def verdict(model, x, y, x_adv):
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y
    return success, (x_adv - x).flatten(1).norm(dim=1)


def ours(model, x, y, name: str, cw_steps: int) -> dict:
    """Our attack without and with the line search (the search timed on its own)."""
    if name == "deepfool":  # the original (box rule, overshot point) and the default (rule best)
        base, t_base = timed(lambda: deepfool_perturb(model, x, y, norm="l2", boundary_search=0,
                                                      rule="box").x_adv)
        tight, t_tight = timed(lambda: deepfool_perturb(model, x, y, norm="l2").x_adv)
        return {"plain": (base, t_base), "tight": (tight, t_tight), "search_s": float("nan")}
    base, t_base = timed(lambda: cw_l2_perturb(model, x, y, steps=cw_steps,
                                               boundary_search=0).x_adv)
    crit = lambda logits, yy: margin(logits, yy, False) < 0  # noqa: E731
    tight, t_search = timed(lambda: tighten_to_boundary(model, x, base, y, steps=20,
                                                        bounds=(0.0, 1.0), adversarial=crit))
    return {"plain": (base, t_base), "tight": (tight, t_base + t_search), "search_s": t_search}


def foolbox_run(model, x, y, name: str, cw_steps: int):
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    if name == "deepfool":
        attack = foolbox.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    else:
        attack = foolbox.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=cw_steps,
                                                       stepsize=0.01, confidence=0,
                                                       initial_const=1e-3, abort_early=True)
    (raw, _, _), t = timed(lambda: attack(fmodel, x, y, epsilons=None))
    return raw, t


def ratios(model, x, y, mine, theirs) -> str:
    s_m, d_m = verdict(model, x, y, mine)
    s_t, d_t = verdict(model, x, y, theirs)
    # Foolbox's C&W returns an all-zero image where no constant succeeded (its best_advs start
    # at zeros); a black image is often misclassified, which is not the attack's success
    s_t &= theirs.flatten(1).abs().amax(dim=1) > 0
    both = s_m & s_t
    r = d_m[both] / d_t[both]
    return (f"success {s_m.float().mean():.3f} vs {s_t.float().mean():.3f}; on {int(both.sum())} "
            f"both broke: per-point ratio mean {r.mean():.4f}, median {r.median():.4f}, "
            f"ratio of means {d_m[both].mean() / d_t[both].mean():.4f}; "
            f"median L2 ours {d_m[both].median():.4f} vs {d_t[both].median():.4f}")


def report(model, x, y, name: str, cw_steps: int, have_foolbox: bool) -> list[str]:
    mine = ours(model, x, y, name, cw_steps)
    (plain, t_plain), (tight, t_tight) = mine["plain"], mine["tight"]
    lines = [f"## {name} (C&W steps {cw_steps})" if name == "cw" else f"## {name}"]
    s_p, d_p = verdict(model, x, y, plain)
    s_t, d_t = verdict(model, x, y, tight)
    ok = s_p & s_t
    lines.append(f"ours search vs none: success {s_t.float().mean():.3f} vs {s_p.float().mean():.3f}; "
                 f"distance ratio mean {(d_t[ok] / d_p[ok]).mean():.4f}, max {(d_t[ok] / d_p[ok]).max():.4f}; "
                 f"time {t_plain:.2f} s + search {mine['search_s']:.2f} s")
    if have_foolbox:
        fb, t_fb = foolbox_run(model, x, y, name, cw_steps)
        lines.append(f"foolbox {t_fb:.2f} s; time ours(search)/foolbox {t_tight / t_fb:.2f}x, "
                     f"ours(none)/foolbox {t_plain / t_fb:.2f}x")
        lines.append("ours(search)/foolbox: " + ratios(model, x, y, tight, fb))
        lines.append("ours(none)/foolbox:   " + ratios(model, x, y, plain, fb))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--cw-steps", type=int, default=1000)
    ap.add_argument("--attacks", nargs="+", default=["deepfool", "cw"], choices=["deepfool", "cw"])
    args = ap.parse_args()
    have_fb = importlib.util.find_spec("foolbox") is not None
    fb_version = __import__("foolbox").__version__ if have_fb else "not installed"
    model, ds = trained_lenet(args.epochs, args.train_limit)
    x, y, acc = correct_points(model, ds, args.points)
    print(f"torch {torch.__version__}, foolbox {fb_version}, {torch.get_num_threads()} thread(s), "
          f"{platform.machine()}; LeNet-5, {args.epochs} epochs on {args.train_limit} MNIST images, "
          f"clean accuracy {acc:.3f}; {x.shape[0]} correctly classified test points")
    for name in args.attacks:
        print("\n".join(report(model, x, y, name, args.cw_steps, have_fb)), flush=True)


if __name__ == "__main__":
    main()
