"""Re-evaluate every round of a `robustcompress prune` run on more test points.

    OMP_NUM_THREADS=1 python docs/reproductions/sparse_reeval.py runs/lenet5-caffe-pruned \
        --dense runs/lenet5-caffe/model --n 5000 --eps 0.1

Prints one row per round (sparsity, clean, FGS, rFGS, unclipped DeepFool r_2) and the standard
errors, and writes ``reeval-<n>.json`` next to the rounds. Uses the same metric functions as the
CLI (`robustcompress.commands.pruning.evaluate_round`), only on more points.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from robustcompress.commands.pruning import evaluate_round
from robustcompress.data import load_dataset
from robustcompress.training import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rounds_dir")
    ap.add_argument("--dense", required=True, help="the dense checkpoint the run started from")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--eps", type=float, default=0.1)
    args = ap.parse_args()
    out = Path(args.rounds_dir)
    ds = load_dataset("mnist", test_limit=args.n)
    x, y = ds.test.x, ds.test.y
    paths = [Path(args.dense)] + sorted(out.glob("r*.safetensors"), key=lambda p: int(p.stem[1:]))
    rows = []
    for k, p in enumerate(paths):
        model = load_checkpoint(p.with_suffix("") if p.suffix else p)
        row = evaluate_round(model, x, y, eps=args.eps, bounds=ds.info.bounds, cw=False,
                             clever_points=0, seed=0, deepfool_box=False)
        row["round"] = k
        rows.append(row)
        se = math.sqrt(row["r_inf_fgsm"] * (1 - row["r_inf_fgsm"]) / len(y))
        print(f"| {k} | {100 * row['weight_sparsity']['total']:.2f}% | {row['clean_acc']:.4f} | "
              f"{row['r_inf_fgsm']:.4f} (±{se:.4f}) | {row['r_inf_rfgsm']:.4f} | "
              f"{row['r2_deepfool']:.4f} |", flush=True)
    (out / f"reeval-{args.n}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
