"""What the randomness probe and the new masking checks cost (issue 14), as ratios measured in one
run: each piece timed alone on the same model, points and device, against the adaptive cascade
with the default budgets (APGD-CE/DLR 100 steps, Square 5000 queries) and against the whole
evaluation (cascade + masking checks).

New pieces: the randomness probe (two forwards of 16 rows), the cross-entropy zero-gradient
check (one more backward on the check subset), the eps-monotonicity check (PGD at eps/2 and
2 eps on the check subset) and the re-judging of every break against the ball and the box.

    OMP_NUM_THREADS=1 python bench/adaptive_overhead.py --n 256
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from robustcompress.attacks import ThreatModel, evaluate_robustness, run_attack
from robustcompress.attacks.base import input_gradient
from robustcompress.attacks.probe import outputs_vary
from robustcompress.attacks.validation import check_within_threat
from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.3)
    args = ap.parse_args()
    ds = load_dataset("mnist", train_limit=10000, test_limit=2000)
    torch.manual_seed(0)
    model = fit(build_model("lenet5", ds.info), ds, TrainConfig(epochs=1, batch_size=128),
                progress=False).model.eval()
    part = ds.test.sample(args.n)
    x, y = part.x, part.y
    threat = ThreatModel.from_spec("linf", args.eps, ds.info)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cascade = timed(lambda: evaluate_robustness(model, x, y, threat, checks=False, generator=g(),
                                                progress=False))
    full_rep = {}

    def full():
        full_rep["r"] = evaluate_robustness(model, x, y, threat, generator=g(), progress=False)

    whole = timed(full)
    probe = timed(lambda: outputs_vary(model, x), repeat=5)
    ce_grad = timed(lambda: input_gradient(model, x, y, loss="ce"), repeat=3)
    at_eps = run_attack("pgd", model, x, y, threat, steps=20, generator=g())  # the checks' own run
    robust, broken = ~at_eps.success, at_eps.success

    def monotone_legs():  # as masking_checks runs them: only the points that could violate
        if robust.any():
            run_attack("pgd", model, x[robust], y[robust], threat.with_eps(args.eps / 2), steps=20,
                       generator=g())
        if broken.any():
            run_attack("pgd", model, x[broken], y[broken], threat.with_eps(min(2 * args.eps, 0.5)),
                       steps=20, generator=g())

    monotone = timed(monotone_legs)
    adv = full_rep["r"].x_adv
    rejudge = timed(lambda: check_within_threat(adv, x, threat, "x"), repeat=5) * 4  # one per attack
    new = probe + ce_grad + monotone + rejudge
    print(f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.machine()}, load average {os.getloadavg()[0]:.1f}, LeNet-5 MNIST (1 epoch), "
          f"{args.n} points, Linf eps {args.eps}")
    print("| piece | seconds | / cascade | / cascade + checks |")
    print("|---|---:|---:|---:|")
    for name, t in (("cascade (APGD-CE/DLR 100, Square 5000)", cascade),
                    ("cascade + masking checks (all, incl. new)", whole),
                    ("randomness probe", probe), ("cross-entropy gradient check", ce_grad),
                    ("eps monotonicity (PGD-20: eps/2 on robust, 2 eps on broken points)", monotone),
                    ("re-judging against ball and box", rejudge), ("all new pieces", new)):
        print(f"| {name} | {t:.3f} | {t / cascade:.3f} | {t / whole:.3f} |")


if __name__ == "__main__":
    main()
