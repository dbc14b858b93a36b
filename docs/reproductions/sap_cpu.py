"""CPU-scale reproduction of Dhillon et al. (ICLR 2018) on MNIST LeNet-5, numbers in sap.md.

Dense vs SAP-100 vs ADV vs ADV+SAP-100 under the paper's protocol (single-step FGSM whose
gradient is the mean of ``--eot`` MC draws, MC-averaged prediction over ``--mc`` draws), then the
adaptive evaluation (:func:`robustcompress.attacks.adaptive.evaluate_robustness`: APGD-CE with EOT
and MC verdicts) at a few eps, and calibration (ECE, reliability plot: the paper's Fig. 4).

    OMP_NUM_THREADS=1 python docs/reproductions/sap_cpu.py --out docs/reproductions/sap-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from robustcompress.attacks import ThreatModel, mc_predict, run_attack
from robustcompress.attacks.adaptive import evaluate_robustness
from robustcompress.data import load_dataset
from robustcompress.defenses.adversarial_training import adversarial_training
from robustcompress.defenses.sap import sap
from robustcompress.metrics.calibration import plot_reliability, reliability
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit


def paper_fgsm(model, x, y, info, lam, eot, mc, seed):
    """Accuracy under FGSM at lambda (0-255 scale) with the paper's MC protocol."""
    gen = torch.Generator().manual_seed(seed)
    if lam == 0:
        return float((mc_predict(model, x, mc_samples=mc, generator=gen).argmax(1) == y).float().mean())
    threat = ThreatModel.from_spec("linf", lam, info, eps_scale=255)
    res = run_attack("fgsm", model, x, y, threat, generator=gen, eot_samples=eot, mc_samples=mc)
    return res.robust_accuracy


def eot_sweep(models, x, y, info, lambdas, args) -> None:
    """SAP-100 accuracy under FGSM computed with 1, 5, ... gradient draws, and transferred from
    the dense model's gradient (verdicts: MC over --mc draws)."""
    rows = {}
    for lam in [v for v in lambdas if v > 0]:
        threat = ThreatModel.from_spec("linf", lam, info, eps_scale=255)
        gen = torch.Generator().manual_seed(int(lam))
        x_dense = run_attack("fgsm", models["dense"], x, y, threat).x_adv
        probs = mc_predict(models["SAP-100"], x_dense, mc_samples=args.mc, generator=gen)
        rows[f"lambda={lam:g} transfer from dense"] = float((probs.argmax(1) == y).float().mean())
        for eot in sorted({1, 5, args.eot}):
            acc = paper_fgsm(models["SAP-100"], x, y, info, lam, eot, args.mc, seed=int(lam) + eot)
            rows[f"lambda={lam:g} EOT {eot}"] = acc
        for k in [k for k in rows if k.startswith(f"lambda={lam:g}")]:
            print(f"SAP-100 {k:32s} acc={rows[k]:.3f}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eot", type=int, default=20)
    ap.add_argument("--mc", type=int, default=20)
    ap.add_argument("--lambdas", default="0,1,2,4,8,16,32,64")
    ap.add_argument("--adaptive-lambdas", default="16,32")
    ap.add_argument("--adaptive-steps", type=int, default=20)
    ap.add_argument("--adaptive-eot", type=int, default=10)
    ap.add_argument("--adv-lambda", type=float, default=16.0)
    ap.add_argument("--out", default="docs/reproductions/sap-cpu.json")
    ap.add_argument("--eot-sweep", action="store_true",
                    help="only: SAP-100 under FGSM with 1..--eot gradient draws and transferred "
                         "from the dense model (the paper's Sec. 4.2.1 comparison)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    ds = load_dataset("mnist", train_limit=args.train_limit, test_limit=args.n)
    info = ds.info
    x, y = ds.test.x[: args.n], ds.test.y[: args.n]
    dense = build_model("lenet5", info)
    fit(dense, ds, TrainConfig(epochs=args.epochs, seed=0), progress=False)
    dense.eval()
    adv = adversarial_training(dense, ds, attack="fgsm", eps=args.adv_lambda, eps_scale=255, mix=0.8,
                               epochs=1, config=TrainConfig(epochs=1, seed=1),
                               generator=torch.Generator().manual_seed(1))
    models = {"dense": dense, "SAP-100": sap(dense), "ADV": adv, "ADV+SAP-100": sap(adv)}
    lambdas = [float(v) for v in args.lambdas.split(",")]
    if args.eot_sweep:
        return eot_sweep(models, x, y, info, lambdas, args)
    out = {"setting": f"MNIST LeNet-5, {args.train_limit} training images, {args.epochs} epochs; "
                      f"{args.n} test images; paper protocol FGSM with EOT {args.eot}, MC {args.mc}",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "paper_protocol": {},
           "adaptive": {}, "ece": {}}
    for name, m in models.items():
        out["paper_protocol"][name] = {}
        for lam in lambdas:
            acc = paper_fgsm(m, x, y, info, lam, args.eot, args.mc, seed=int(lam) + 7)
            out["paper_protocol"][name][lam] = acc
            print(f"paper protocol  {name:12s} lambda={lam:4g}  acc={acc:.3f}", flush=True)
    for lam in [float(v) for v in args.adaptive_lambdas.split(",") if v]:
        threat = ThreatModel.from_spec("linf", lam, info, eps_scale=255)
        for name in ("dense", "SAP-100"):
            rep = evaluate_robustness(
                models[name], x, y, threat, attacks=[{"attack": "apgd", "label": "apgd-ce",
                                                      "loss": "ce", "steps": args.adaptive_steps}],
                eot_samples=args.adaptive_eot, mc_samples=args.mc, checks=False,
                generator=torch.Generator().manual_seed(11), progress=False)
            out["adaptive"].setdefault(name, {})[lam] = rep.robust_accuracy
            print(f"adaptive        {name:12s} lambda={lam:4g}  acc={rep.robust_accuracy:.3f}", flush=True)
    curves = {}
    for lam in (0.0, 16.0):
        for name, m in models.items():
            gen = torch.Generator().manual_seed(3)
            xs = x
            if lam:
                threat = ThreatModel.from_spec("linf", lam, info, eps_scale=255)
                xs = run_attack("fgsm", m, x, y, threat, generator=gen, eot_samples=args.eot,
                                mc_samples=args.mc).x_adv
            data = reliability(mc_predict(m, xs, mc_samples=args.mc, generator=gen), y)
            out["ece"][f"{name} lambda={lam:g}"] = data.ece
            if lam:
                curves[name] = data
    plot_reliability(curves, Path(args.out).with_name("sap-reliability.png"),
                     title="MNIST LeNet-5, FGSM lambda=16 (MC 20)")
    out["wall_s"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["ece"], indent=1))
    print(f"done in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
