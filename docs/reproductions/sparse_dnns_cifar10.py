"""Summarise the seeds of `configs/pruning-cifar10-vgg_sparse-cpu.yaml` (Guo et al., CIFAR-10).

    OMP_NUM_THREADS=1 python docs/reproductions/sparse_dnns_cifar10.py \
        runs/pruning-cifar10-vgg_sparse-cpu runs/pruning-cifar10-vgg_sparse-cpu-seed1

Prints one markdown row per pruning round (sparsity, clean, FGS/rFGS, DeepFool r_2, adaptive
worst case) as mean ± half-range over the runs, and writes ``sparse-dnns-cifar10-vgg_sparse.json``
(every run's rows) and ``sparse-dnns-cifar10-vgg_sparse.png`` next to this file. Reads the runs'
results stores only; nothing is recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robustcompress.experiments.store import ResultsStore

HERE = Path(__file__).parent
COLS = [("clean", "none", "clean", "0"), ("FGS 1/255", "fgsm", "paper", "1.0/255"),
        ("FGS 2/255", "fgsm", "paper", "2.0/255"), ("FGS 8/255", "fgsm", "paper", "8.0/255"),
        ("rFGS 2/255", "rfgsm", "paper", "2.0/255"), ("rFGS 8/255", "rfgsm", "paper", "8.0/255"),
        ("adaptive 2/255", "worst-case", "adaptive", "2.0/255")]


def read_run(run: Path) -> list[dict]:
    """One dict per variant (base, pruned/r1, ...): sparsity, accuracies, DeepFool r_2."""
    with ResultsStore(run / "results.db") as store:
        results, metrics = store.results(), store.metrics()
    seed = json.loads((run / "config.json").read_text()).get("seed")
    rows: dict[str, dict] = {}
    for m in metrics:
        if m["key"] == "sparsity":
            rows.setdefault(m["variant"], {})["sparsity"] = m["value"]
    for r in results:
        row = rows.setdefault(r["variant"], {})
        for name, attack, protocol, eps in COLS:
            if (r["attack"], r["protocol"], str(r["eps_label"])) == (attack, protocol, eps):
                row[name] = r["clean_acc"] if protocol == "clean" else r["robust_acc"]
        if r["protocol"] == "minimal" and r["attack"] == "deepfool":
            extra = r["extra"] if isinstance(r["extra"], dict) else json.loads(r["extra"] or "{}")
            row["r2 DeepFool"], row["r2 found"] = r["mean_norm"], extra.get("found")
    order = sorted(rows, key=lambda v: -1 if v == "base" else int(v.rsplit("r", 1)[1]))
    return [{"seed": seed, "variant": v, **rows[v]} for v in order]


def fmt(values: list, digits: int, scale: float = 1.0) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "–"
    mid, half = (max(vals) + min(vals)) / 2, (max(vals) - min(vals)) / 2
    return f"{mid:.{digits}f} ± {half:.{digits}f}" if len(vals) > 1 else f"{mid:.{digits}f}"


def main() -> None:
    runs = [read_run(Path(p)) for p in sys.argv[1:]]
    (HERE / "sparse-dnns-cifar10-vgg_sparse.json").write_text(json.dumps(runs, indent=1))
    names = [c[0] for c in COLS] + ["r2 DeepFool"]
    print("| round | sparsity | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for k, first in enumerate(runs[0]):
        same = [run[k] for run in runs]
        cells = [fmt([s.get(n) for s in same], 1, 100) for n in names[:-1]]
        cells.append(fmt([s.get("r2 DeepFool") for s in same], 3))
        print(f"| {k} | {first.get('sparsity', 0) * 100:.2f}% | " + " | ".join(cells) + " |")
    plot(runs)


def plot(runs: list[list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, run in enumerate(runs):
        x = list(range(len(run)))
        style = "-" if i == 0 else "--"
        for name, color in [("clean", "k"), ("FGS 2/255", "tab:blue"), ("rFGS 2/255", "tab:green"),
                            ("adaptive 2/255", "tab:red")]:
            axes[0].plot(x, [r.get(name) for r in run], style, color=color,
                         label=name if i == 0 else None)
        axes[1].plot(x, [r.get("r2 DeepFool") for r in run], style, color="tab:purple",
                     label=f"seed {run[0]['seed']}")
    sp = [f"{r.get('sparsity', 0) * 100:.3g}" for r in runs[0]]
    for ax, title in zip(axes, ["accuracy (r_inf)", "DeepFool r_2 (mean L2)"]):
        ax.set_xticks(range(0, len(sp), 2), sp[::2])
        ax.set_xlabel("weight sparsity (%)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("CIFAR-10 VGG-like (width 0.25), progressive pruning, 2 seeds (solid / dashed)")
    fig.tight_layout()
    fig.savefig(HERE / "sparse-dnns-cifar10-vgg_sparse.png", dpi=110)


if __name__ == "__main__":
    main()
