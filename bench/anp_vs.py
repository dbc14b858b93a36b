"""ANP-VS reproduction at CPU scale + size/latency of the exported model (Madaan et al., ICML 2020).

MNIST / LeNet-5: a standard-trained base, PGD adversarial training (fine-tuned from the base) and
ANP-VS (from the base), evaluated like the original code: white-box PGD-40 (eps 0.3, step 0.01,
random start) on the eval-mode network, vulnerability V (mean |z - z_adv| over the post-ReLU
features), channels pruned (E[pi] <= 1e-3), and parameters / MACs / bytes / batch-1 latency of the
structurally exported model vs the dense one. Stages are cached in --out, so each stage can run
separately (each stays under ten minutes on one CPU thread):

    OMP_NUM_THREADS=1 python bench/anp_vs.py --stage standard
    OMP_NUM_THREADS=1 python bench/anp_vs.py --stage pgd_at
    OMP_NUM_THREADS=1 python bench/anp_vs.py --stage anp_vs
    OMP_NUM_THREADS=1 python bench/anp_vs.py --stage evaluate

Deviations from the original recipe (200 epochs on 60k images): by default 5k training images,
3 epochs of standard training, 3 epochs of AT / ANP-VS, mask learning rate 5e-2 instead of 1e-2
(so that masks can reach the threshold in ~240 steps), evaluation on 1000 test images; the flags
--train-limit, --epochs, --mask-lr and --test-limit set them. The PGD-AT baseline has several
recipes (--at-recipe, see AT_RECIPES): Madry's adversarial-only loss, and the ANP_VS code's own
AT, which uses ANP-VS's weight loss mix and optimiser; --anp-lr runs ANP-VS under either lr regime.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.data import load_dataset
from robustcompress.defenses.adversarial_training import adversarial_training
from robustcompress.defenses.anp_vs import LENET_LR_STEPS, anp_vs, default_config, export_pruned, probe_inputs
from robustcompress.metrics.compression import count_macs, count_parameters, exported_bytes, measure_latency
from robustcompress.metrics.vulnerability import measure_vulnerability, plot_vulnerability_histograms
from robustcompress.models import build_model
from robustcompress.nn.beta_bernoulli import add_bb_masks, mask_summary
from robustcompress.training import TrainConfig, fit, load_checkpoint, recipe_overrides, save_checkpoint

EPS, STEP, TRAIN_STEPS, EVAL_STEPS = 0.3, 0.01, 20, 40


def data(train_limit: int, test_limit: int):
    return load_dataset("mnist", train_limit=train_limit, test_limit=test_limit)


def stage_standard(out: Path, ds, epochs: int) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", ds.info)
    fit(model, ds, TrainConfig(epochs=epochs, batch_size=64, seed=0), progress=False)
    save_checkpoint(model, out / "standard", {})


#: The two learning-rate regimes compared: the ANP_VS code's LeNet steps (x0.1 at 50% and x0.01
#: at 70% of training; with 4 epochs that is one x0.1 step at epoch 2) or a constant lr.
LR_STEPS = {"steps": LENET_LR_STEPS, "constant": ()}

#: PGD-AT recipes: checkpoint name, table label, clean-loss weight ``mix``, L2 weight decay and
#: lr regime. "madry" is Madry et al.'s objective (adversarial examples only) at a constant lr;
#: "original" is the AT baseline of the ANP_VS code (run.py, mode base with adv_train):
#: (CE(x) + 2 CE(x_adv)) / 3 with exactly the weight optimiser ANP-VS uses, so the two differ
#: only by the masks, their KL and the VS term; "original-constant" is that at a constant lr (the
#: twin of ANP-VS with --anp-lr constant); "madry-steps" is Madry's objective with the ANP-VS
#: optimiser. All start from the standard model, i.e. the README's "Pretrained AT" row (its "AT"
#: row trains from scratch).
AT_RECIPES = {
    "madry": ("pgd_at", "PGD-AT", 0.0, 0.0, "constant"),
    "original": ("pgd_at_original", "PGD-AT (ANP_VS code)", 1.0 / 3.0, 1e-4, "steps"),
    "original-constant": ("pgd_at_original_constant_lr", "PGD-AT (ANP_VS code, constant lr)",
                          1.0 / 3.0, 1e-4, "constant"),
    "madry-steps": ("pgd_at_madry_steps", "PGD-AT (adv only, ANP-VS optimiser)", 0.0, 1e-4, "steps"),
}
#: ANP-VS checkpoints per lr regime (the masks and the weights follow the same regime)
ANP_CKPTS = {"steps": ("anp_vs_masked", "ANP-VS"),
             "constant": ("anp_vs_masked_constant_lr", "ANP-VS (constant lr)")}


def stage_pgd_at(out: Path, ds, epochs: int, recipe: str = "madry") -> None:
    ckpt, _label, mix, weight_decay, lr = AT_RECIPES[recipe]
    base = load_checkpoint(out / "standard")
    config = TrainConfig(epochs=epochs, batch_size=64, seed=0,
                         **recipe_overrides(epochs, LR_STEPS[lr], weight_decay or None))
    net = adversarial_training(base, ds, attack="pgd", eps=EPS, steps=TRAIN_STEPS, step_size=STEP,
                               mix=mix, config=config, generator=torch.Generator().manual_seed(0))
    net.robustcompress_defenses = [{"name": "adversarial_training", "params": {
        "attack": "pgd", "eps": EPS, "steps": TRAIN_STEPS, "step_size": STEP, "mix": mix,
        "epochs": epochs}}]
    save_checkpoint(net, out / ckpt, {"recipe": recipe, "train_config": config.model_dump()})


def stage_anp_vs(out: Path, ds, epochs: int, mask_lr: float, lr: str = "steps") -> None:
    base = load_checkpoint(out / "standard")
    config = default_config(epochs, lr_steps=LR_STEPS[lr])
    net = anp_vs(base, ds, eps=EPS, steps=TRAIN_STEPS, step_size=STEP, beta=4.0, lam=1e-3,
                 mask_lr=mask_lr, config=config, generator=torch.Generator().manual_seed(0))
    net.robustcompress_defenses = [{"name": "anp_vs", "params": {
        "eps": EPS, "steps": TRAIN_STEPS, "step_size": STEP, "mask_lr": mask_lr, "epochs": epochs,
        "export": False}}]
    save_checkpoint(net, out / ANP_CKPTS[lr][0], {"lr": lr, "train_config": config.model_dump()})


def _size(model, shape) -> dict:
    return {"params": count_parameters(model), "macs": count_macs(model, shape),
            "bytes": exported_bytes(model),
            "latency_ms": measure_latency(model, shape, batch_size=1, repeats=30)}


def stage_evaluate(out: Path, ds, only: tuple[str, ...] = ()) -> dict:
    """Evaluate every trained checkpoint in ``out`` (or only those named), merge the rows into
    ``out/results.json`` and plot the vulnerability histograms of this call's models."""
    threat = ThreatModel.from_spec("linf", EPS, ds.info)
    x, y = ds.test.x, ds.test.y
    results = out / "results.json"
    rows = json.loads(results.read_text()) if only and results.exists() else {}
    reports = {}
    labels = {"standard": "standard", **{ckpt: label for ckpt, label, *_ in AT_RECIPES.values()},
              **dict(ANP_CKPTS.values())}
    for name, label in labels.items():
        if not (out / f"{name}.safetensors").exists() or (only and name not in only):
            continue  # a recipe that was not trained in this run, or not asked for
        model = load_checkpoint(out / name).eval()
        t0 = time.perf_counter()
        res = run_attack("pgd", model, x, y, threat, steps=EVAL_STEPS, step_size=STEP,
                         generator=torch.Generator().manual_seed(1))
        # one batch: the attack is called once, on all of x, and returns the PGD-40 examples above
        rep = measure_vulnerability(model, x, y, lambda *_a, _r=res: _r.x_adv, batch_size=len(y))
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        row = {"clean": clean, "pgd40": res.robust_accuracy, "V": rep.V, "per_layer_V": rep.per_layer,
               "eval_seconds": time.perf_counter() - t0}
        reports[label] = rep
        if name.startswith("anp"):
            row["channels"] = {k: list(v) for k, v in mask_summary(model).items()}
            exp = export_pruned(model, probe_inputs(ds.info))
            small = exp.model.eval()
            with torch.no_grad():
                row["export_max_abs_diff"] = float((small(x[:256]) - model(x[:256])).abs().max())
            row["size_dense"] = _size(load_checkpoint(out / "standard").eval(), ds.info.shape)
            row["size_exported"] = _size(small, ds.info.shape)
            row["zeroed"] = exp.zeroed
            total = sum(t for _, t in row["channels"].values())
            row["pruned_units_pct"] = 100.0 * (1 - sum(k for k, _ in row["channels"].values()) / total)
        rows[label] = row
    plot_vulnerability_histograms(reports, out / ("vulnerability_hist" + "".join(f"-{n}" for n in only) + ".png"))
    results.write_text(json.dumps(rows, indent=1))
    return rows


def stage_adaptive(out: Path, ds, only: tuple[str, ...], n: int) -> None:
    """The adaptive cascade (APGD-CE, APGD-T, Square, transfer from the standard model) with the
    gradient-masking checks on ``n`` stratified test points, for each named checkpoint: does the
    PGD-40 number of the table survive stronger and gradient-free attacks?"""
    from robustcompress.attacks import evaluate_robustness

    threat = ThreatModel.from_spec("linf", EPS, ds.info)
    part = ds.test.sample(n)
    surrogate = load_checkpoint(out / "standard").eval()
    for name in only:
        rep = evaluate_robustness(load_checkpoint(out / name).eval(), part.x, part.y, threat,
                                  surrogate_model=surrogate, generator=torch.Generator().manual_seed(2),
                                  progress=False)
        (out / f"adaptive-{name}.json").write_text(json.dumps(rep.to_dict(), indent=1))
        flags = [f.name for f in rep.flags if f.raised] if rep.flags else []
        print(f"{name}: clean {rep.clean_accuracy:.4f}, adaptive worst case {rep.robust_accuracy:.4f} "
              f"on {rep.n} points; per attack " + ", ".join(
                  f"{a.label} {a.robust_accuracy:.4f}" for a in rep.attacks) + f"; flags raised: {flags or 'none'}")


def report(rows: dict) -> str:
    lines = ["| model | clean | PGD-40 (eps 0.3) | V | README clean / PGD |", "|---|---|---|---|---|"]
    paper = {"PGD-AT": "99.14 / 88.03", "PGD-AT (ANP_VS code)": "99.18 / 88.26 (Pretrained AT)",
             "PGD-AT (adv only, ANP-VS optimiser)": "-",
             "ANP-VS": "99.05 / 91.31", "standard": "-"}
    for k, r in rows.items():
        lines.append(f"| {k} | {100 * r['clean']:.2f} | {100 * r['pgd40']:.2f} | {r['V']:.4f} | {paper.get(k, '-')} |")
    a = rows.get("ANP-VS")
    if a:
        d, e = a["size_dense"], a["size_exported"]
        lines += ["", f"ANP-VS pruned units: {a['pruned_units_pct']:.2f}% (channels {a['channels']})",
                  "| | params | MACs | bytes on disk | latency batch 1 (ms) |", "|---|---|---|---|---|",
                  f"| dense LeNet-5 | {d['params']:,} | {d['macs']:,} | {d['bytes']:,} | {d['latency_ms']:.3f} |",
                  f"| ANP-VS exported | {e['params']:,} | {e['macs']:,} | {e['bytes']:,} | {e['latency_ms']:.3f} |",
                  f"| ratio | {d['params'] / e['params']:.2f}x | {d['macs'] / e['macs']:.2f}x | "
                  f"{d['bytes'] / e['bytes']:.2f}x | {d['latency_ms'] / e['latency_ms']:.2f}x |",
                  f"max |exported - masked| = {a['export_max_abs_diff']:.2e}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["standard", "pgd_at", "anp_vs", "evaluate", "adaptive", "all"],
                    default="all", help="all = standard, pgd_at, anp_vs, evaluate; adaptive (needs --only) "
                    "runs the adaptive cascade on --adaptive-n test points")
    ap.add_argument("--adaptive-n", type=int, default=1000)
    ap.add_argument("--out", default="runs/anp-vs-bench")
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mask-lr", type=float, default=5e-2)
    ap.add_argument("--only", nargs="*", default=[], metavar="CHECKPOINT",
                    help="evaluate only these checkpoints of --out (e.g. pgd_at_original_constant_lr) "
                         "and merge them into its results.json")
    ap.add_argument("--anp-lr", choices=sorted(ANP_CKPTS), default="steps",
                    help="ANP-VS lr regime: steps = the original x0.1 at 50%% / 70%%, constant = none")
    ap.add_argument("--at-recipe", choices=sorted(AT_RECIPES), default="madry",
                    help="PGD-AT baseline (see AT_RECIPES): madry = adversarial examples only, constant "
                         "lr; original = the ANP_VS code's (CE + 2 CE_adv)/3 with ANP-VS's weight optimiser")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = data(args.train_limit, args.test_limit)
    stages = ["standard", "pgd_at", "anp_vs", "evaluate"] if args.stage == "all" else [args.stage]
    for st in stages:
        t0 = time.perf_counter()
        if st == "standard":
            stage_standard(out, ds, args.epochs)
        elif st == "pgd_at":
            stage_pgd_at(out, ds, args.epochs, args.at_recipe)
        elif st == "anp_vs":
            stage_anp_vs(out, ds, args.epochs, args.mask_lr, args.anp_lr)
        elif st == "adaptive":
            stage_adaptive(out, ds, tuple(args.only), args.adaptive_n)
        else:
            print(report(stage_evaluate(out, ds, tuple(args.only))))
        print(f"[{st}] {time.perf_counter() - t0:.1f}s (torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
