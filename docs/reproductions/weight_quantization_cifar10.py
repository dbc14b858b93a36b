"""Summarise the seeds of `configs/quantization-cifar10-wrn-cpu.yaml` (Song et al., CIFAR-10).

    OMP_NUM_THREADS=1 python docs/reproductions/weight_quantization_cifar10.py \
        runs/quantization-cifar10-wrn-cpu runs/quantization-cifar10-wrn-cpu-seed1

Prints the white-box and black-box/noise tables (accuracy %, mean ± half-range over the runs) in
the paper's row order, the 3-bit models' ||dW||_2 of the last five layers, and writes every run's rows to ``weight-quantization-cifar10-cpu.json`` next
to this file. Reads the runs' results stores only; nothing is recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robustcompress.experiments.store import ResultsStore

HERE = Path(__file__).parent
ROWS = [("Orig.", "base"), ("Orig. (Q)", "q3"), ("Orig.+mu", "mu"), ("Orig.+mu (Q)", "mu_q3"),
        ("Adv.", "adv"), ("Adv. (Q)", "adv_q3"), ("Adv.+mu", "adv_mu"), ("Adv.+mu (Q)", "adv_mu_q3"),
        ("F.L.", "fl"), ("F.L. (Q)", "fl_q3"), ("F.L.+mu", "fl_mu"), ("F.L.+mu (Q)", "fl_mu_q3")]
WHITE = [("clean", "none", "clean", "0"), ("C&W-L2 0.5", "cw", "paper", "0.5"),
         ("FGSM 2", "fgsm", "paper", "2.0/255"), ("FGSM 8", "fgsm", "paper", "8.0/255"),
         ("PGD 2", "pgd", "paper", "2.0/255"), ("PGD 8", "pgd", "paper", "8.0/255"),
         ("BIM 2", "bim", "paper", "2.0/255"), ("BIM 8", "bim", "paper", "8.0/255"),
         ("MIM 2", "mim", "paper", "2.0/255"), ("MIM 8", "mim", "paper", "8.0/255"),
         ("adaptive 2", "worst-case", "adaptive", "2.0/255"),
         ("adaptive 8", "worst-case", "adaptive", "8.0/255")]
BLACK = [("transfer FGSM 2", "transfer", "paper", "2.0/255"),
         ("transfer FGSM 8", "transfer", "paper", "8.0/255"),
         ("Gaussian 8", "gaussian", "paper", "8.0/255"), ("uniform 8", "uniform", "paper", "8.0/255")]


def read_run(run: Path) -> dict:
    """``{variant: {column: accuracy}}`` for the columns above, plus the run's seed."""
    with ResultsStore(run / "results.db") as store:
        results, metrics = store.results(), store.metrics()
    out: dict = {"seed": json.loads((run / "config.json").read_text()).get("seed"), "variants": {},
                 "dW_2": {}}
    for m in metrics:  # ||dW||_2 per layer (reshaped O x I k k matrix), the slides' criterion
        if m["key"] == "spectral" and m["variant"].endswith("q3") and isinstance(m.get("extra"), dict):
            out["dW_2"][m["variant"]] = dict(zip(m["extra"]["layers"], m["extra"]["values"]))
    for r in results:
        for name, attack, protocol, eps in WHITE + BLACK:
            if (r["attack"], r["protocol"], str(r["eps_label"])) == (attack, protocol, eps):
                acc = r["clean_acc"] if protocol == "clean" else r["robust_acc"]
                out["variants"].setdefault(r["variant"], {})[name] = acc
    return out


def cell(values: list) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "–"
    mid, half = (max(vals) + min(vals)) / 2, (max(vals) - min(vals)) / 2
    return f"{mid:.1f} ± {half:.1f}" if len(vals) > 1 else f"{mid:.1f}"


def table(runs: list[dict], cols: list) -> None:
    print("| model | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, variant in ROWS:
        cells = [cell([r["variants"].get(variant, {}).get(c[0]) for r in runs]) for c in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    runs = [read_run(Path(p)) for p in sys.argv[1:]]
    (HERE / "weight-quantization-cifar10-cpu.json").write_text(json.dumps(runs, indent=1))
    table(runs, WHITE)
    print()
    table(runs, BLACK)
    print("\n||dW||_2 of the last five layers (3-bit), per run:")
    for r in runs:
        for _, variant in ROWS:
            layers = r["dW_2"].get(variant)
            if layers:
                last = list(layers.items())[-5:]
                print(f"  seed {r['seed']} {variant}: " + ", ".join(f"{k} {v:.2f}" for k, v in last))


if __name__ == "__main__":
    main()
