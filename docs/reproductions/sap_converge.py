"""SAP on CIFAR-10 ResNet-20: the adaptive number as the attacker's EOT budget grows (issue 14).

Loads a dense ResNet-20 checkpoint (``robustcompress train --dataset cifar10 --model resnet20
--epochs 8 --optimizer sgd --lr 0.1 --weight-decay 0.0005 --schedule cosine --out DIR``), adds
SAP-100 post hoc, and runs :func:`robustcompress.attacks.convergence.evaluate_until_converged`
(APGD-CE/DLR with EOT n = 5, 10, 20, 40, Square, transfer from the dense model; MC verdicts)
at each eps, beside the dense model's adaptive number. Writes JSON and a PNG of the curves.

    OMP_NUM_THREADS=1 python docs/reproductions/sap_converge.py --checkpoint DIR \
        --out docs/reproductions/sap-cifar10-converge.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from robustcompress.attacks import ThreatModel, evaluate_robustness
from robustcompress.attacks.convergence import evaluate_until_converged
from robustcompress.data import load_dataset
from robustcompress.defenses.sap import sap
from robustcompress.training import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", default="docs/reproductions/sap-cifar10-converge.json")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", default="8,2", help="0-255 scale, comma separated")
    ap.add_argument("--eot-start", type=int, default=5)
    ap.add_argument("--eot-cap", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mc", type=int, default=20)
    ap.add_argument("--square", type=int, default=100)
    ap.add_argument("--tol", type=float, default=0.02, help="0: grow to the cap whatever happens")
    args = ap.parse_args()
    data = load_dataset("cifar10")
    dense = load_checkpoint(args.checkpoint).eval()
    model = sap(dense, 1.0).eval()
    part = data.test.sample(args.n)
    out = {"settings": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "results": []}
    for lam in [float(e) for e in args.eps.split(",")]:
        threat = ThreatModel.from_spec("linf", lam, data.info, eps_scale=255)
        kw = dict(mc_samples=args.mc, square_queries=args.square, checks=False, progress=True,
                  generator=torch.Generator().manual_seed(0))
        t0 = time.time()
        base = evaluate_robustness(dense, part.x, part.y, threat, apgd_steps=args.steps, **kw)
        t1 = time.time()
        rep = evaluate_until_converged(model, part.x, part.y, threat, surrogate_model=dense,
                                       eot_start=args.eot_start, eot_cap=args.eot_cap,
                                       apgd_steps=args.steps, grow_steps=False, tol=args.tol, **kw)
        out["results"].append({
            "eps_255": lam, "dense_clean": base.clean_accuracy, "dense_adaptive": base.robust_accuracy,
            "dense_seconds": t1 - t0, "sap_clean": rep.clean_accuracy,
            "sap_convergence": rep.settings["convergence"],
            "sap_cascade": [a.to_dict() for a in rep.attacks], "sap_seconds": time.time() - t1})
        print(json.dumps(out["results"][-1]["sap_convergence"], indent=1), flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(args.out).with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in out["results"]:
        curve = r["sap_convergence"]["curve"]
        line, = ax.plot([p["eot_samples"] for p in curve], [100 * p["robust_accuracy"] for p in curve],
                        "o-", label=f"SAP-100, {r['eps_255']:g}/255, worst case")
        if all("whitebox_accuracy" in p for p in curve):
            ax.plot([p["eot_samples"] for p in curve], [100 * p["whitebox_accuracy"] for p in curve],
                    "s:", color=line.get_color(), label=f"SAP-100, {r['eps_255']:g}/255, APGD only")
        ax.axhline(100 * r["dense_adaptive"], ls="--", color=line.get_color(),
                   label=f"dense, {r['eps_255']:g}/255")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("EOT draws per gradient (APGD-CE/DLR)")
    ax.set_ylabel("adaptive robust accuracy % (worst case)")
    ax.set_title(f"SAP on CIFAR-10 ResNet-20, {out['settings']['n']} test points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
