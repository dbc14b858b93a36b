"""Guo et al. (NeurIPS 2018), "Sparse DNNs with improved adversarial robustness": progressive
magnitude pruning with the robustness metrics measured after every round, resumable through
``curve.json`` in the run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from robustcompress.errors import UserInputError


@dataclass
class PruneOptions:
    """The pruning schedule (rho of the remaining weights per round, m rounds) and retraining."""

    rho: float = 1 / 3
    rounds: int = 16
    retrain_epochs: int = 1
    scope: str = "uniform"
    keep_first_last: bool = False
    l1_activation: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128

    def check(self) -> None:
        """Refuse values the schedule cannot take, naming the option to change."""
        if self.scope not in ("uniform", "global"):
            raise UserInputError(f"--scope must be uniform or global, not {self.scope!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise UserInputError(f"--optimizer must be adam or sgd, not {self.optimizer!r}")
        if not 0 < self.rho < 1:
            raise UserInputError(f"--rho must be in (0, 1), got {self.rho}; the paper uses 0.333")


@dataclass
class RoundMetrics:
    """What the paper reports per round: r_inf under FGS/rFGS at ``eps``, DeepFool r_2, optional
    C&W r_2 and mean CLEVER over ``clever_points``."""

    eps: float = 0.1
    cw: bool = False
    clever_points: int = 0
    deepfool_box: bool = True


@dataclass
class PruningCurve:
    rows: list = field(default_factory=list)
    peak: Optional[int] = None
    over_pruned: Optional[int] = None
    curve_path: Optional[Path] = None
    plot_path: Optional[Path] = None
    n_points: int = 0


def evaluate_round(model, x, y, *, eps: float, bounds, cw: bool, clever_points: int,
                   seed: int, deepfool_box: bool = True) -> dict:
    """One row of the robustness-vs-sparsity curve: clean acc, r_inf (FGS, rFGS), r_2, CLEVER."""
    import torch

    from robustcompress.metrics.robustness_metrics import clever, r_2, r_inf
    from robustcompress.metrics.sparsity import activation_sparsity, weight_sparsity

    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    acts = activation_sparsity(model, x)
    row = {"clean_acc": clean, "weight_sparsity": weight_sparsity(model),
           "activation_sparsity": acts,
           # the paper's "Sparsity (a)": zeros of the activations feeding the last layer
           "act_zero_frac_last": list(acts.values())[-1]["zero_frac"] if acts else float("nan")}
    ri = r_inf(model, x, y, eps, bounds=bounds, generator=torch.Generator().manual_seed(seed))
    row.update({f"r_inf_{k}": v for k, v in ri.items()})
    df = r_2(model, x, y, attack="deepfool", bounds=bounds, clip_to_box=deepfool_box)
    row.update({"r2_deepfool": df["r2"], "r2_rel_deepfool": df["r2_rel"],
                "deepfool_success": df["success_rate"]})
    if cw:
        c = r_2(model, x, y, attack="cw", bounds=bounds, steps=100, binary_search_steps=5,
                initial_const=0.1)
        row.update({"r2_cw": c["r2"], "r2_rel_cw": c["r2_rel"], "cw_success": c["success_rate"]})
    if clever_points > 0:
        s = clever(model, x[:clever_points], bounds=bounds,
                   generator=torch.Generator().manual_seed(seed))
        row["clever_l2"] = float(s.mean())
    return row


def pruning_curve(checkpoint: str, out: str, *, options: PruneOptions, metrics: RoundMetrics,
                  limit: int = 500, data_dir: Optional[str] = None,
                  train_limit: Optional[int] = None, device: str = "auto", seed: int = 0,
                  progress: bool = False,
                  on_row: Optional[Callable[[dict], None]] = None) -> PruningCurve:
    """Prune ``checkpoint`` progressively into the run folder ``out`` (``r{k}`` checkpoints,
    ``curve.json``, ``curve.png``); rounds already in ``curve.json`` are not measured again."""
    from robustcompress.defenses.pruning import L1Activation, progressive_prune
    from robustcompress.experiments.protocols.loading import eval_points, load_checkpoint_data
    from robustcompress.metrics.robustness_metrics import plot_robustness_vs_sparsity
    from robustcompress.training import TrainConfig, save_checkpoint

    options.check()
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, train_limit=train_limit, device=device)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    x, y = eval_points(ld.data, limit, ld.device)
    curve = PruningCurve(curve_path=outdir / "curve.json", plot_path=outdir / "curve.png",
                         n_points=len(x))
    done = ({r["round"]: r for r in json.loads(curve.curve_path.read_text())}
            if curve.curve_path.is_file() else {})

    def record(k: int, sparsity: float, m) -> None:
        row = done.get(k)
        if row is None:
            row = {"round": k, "sparsity": sparsity,
                   **evaluate_round(m, x, y, eps=metrics.eps, bounds=ld.data.info.bounds,
                                    cw=metrics.cw, clever_points=metrics.clever_points, seed=seed,
                                    deepfool_box=metrics.deepfool_box)}
            if k > 0:
                save_checkpoint(m, outdir / f"r{k}", {"round": k, "metrics": row})
        curve.rows.append(row)
        curve.curve_path.write_text(json.dumps(curve.rows, indent=1))
        if on_row is not None:
            on_row(row)

    record(0, 0.0, ld.model)
    o = options
    config = TrainConfig(optimizer=o.optimizer, lr=o.lr, weight_decay=o.weight_decay,
                         batch_size=o.batch_size, seed=seed)
    progressive_prune(ld.model, ld.data, o.rho, o.rounds, o.retrain_epochs, scope=o.scope,
                      keep_first_last=o.keep_first_last, train_config=config,
                      objective=L1Activation(o.l1_activation) if o.l1_activation > 0 else None,
                      checkpoint_dir=outdir / "rounds", device=ld.device, progress=progress,
                      on_round=record)
    det = plot_robustness_vs_sparsity(curve.rows, curve.plot_path)
    curve.peak, curve.over_pruned = det["peak"], det["over_pruned"]
    return curve
