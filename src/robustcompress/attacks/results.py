"""The one return value of every attack: :class:`AttackResult`.

No ``(raw, clipped, success)`` triple: adversarial inputs inside the threat model, per-sample
success under the MC-averaged prediction, "fooled in at least one draw", predictions and
perturbation sizes (built by :mod:`robustcompress.attacks.verdicts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class AttackResult:
    """Outcome of one attack on a batch (every tensor has one row per input).

    Attributes
    ----------
    x_adv : adversarial inputs, inside the threat model's eps-ball and box (minimal-perturbation
        attacks may return points outside the ball; then ``success`` also requires
        ``norm <= eps``).
    success : the attack reached its goal (misclassification, or the target class) under the
        MC-averaged prediction. Robust accuracy is ``1 - success.float().mean()``; inputs the model
        already misclassifies count as successes.
    fooled_any : goal reached in at least one of the ``mc_samples`` draws (equal to ``success``
        for deterministic models).
    pred : predicted class of ``x_adv`` (:func:`~robustcompress.attacks.verdicts.prediction`:
        argmax of the logits for a deterministic model, of the MC-averaged softmax for a
        stochastic one).
    norm : perturbation size ``||x_adv - x||`` in the threat model's norm.
    attack, params : the attack's registered name and the parameters it ran with.
    extra : attack-specific per-sample or scalar information (e.g. the loss reached).
    time_s : wall-clock seconds (set by :func:`~robustcompress.attacks.registry.run_attack`).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    fooled_any: torch.Tensor
    pred: torch.Tensor
    norm: torch.Tensor
    attack: str = ""
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    time_s: float = 0.0

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def robust_accuracy(self) -> float:
        """Fraction of inputs on which the attack failed (NaN for an empty batch)."""
        n = len(self)
        return float((~self.success).sum()) / n if n else math.nan

    def summary(self) -> dict:
        """Scalars for tables and JSON: robust accuracy, fooled-any rate, perturbation norms."""
        norm = self.norm.detach().double().cpu()
        ok = self.success.cpu()
        return {
            "attack": self.attack,
            "n": len(self),
            "robust_accuracy": self.robust_accuracy,
            "success_rate": float(ok.double().mean()) if len(self) else math.nan,
            "fooled_any_rate": float(self.fooled_any.double().mean()) if len(self) else math.nan,
            "norm_mean": float(norm.mean()) if len(self) else math.nan,
            "norm_median": float(norm.median()) if len(self) else math.nan,
            "norm_max": float(norm.max()) if len(self) else math.nan,
            "time_s": self.time_s,
            "params": dict(self.params),
        }

    @staticmethod
    def concat(results: Sequence["AttackResult"]) -> "AttackResult":
        """Join per-batch results (same attack) into one, in order.

        Per-sample tensors in ``extra`` are concatenated, numbers averaged weighted by batch size,
        anything else taken from the first batch.
        """
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]
        extra = {}
        sizes = [len(r) for r in results]
        for k, v in first.extra.items():
            values = [r.extra.get(k) for r in results]
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and all(isinstance(u, torch.Tensor) for u in values):
                extra[k] = torch.cat(values)
            elif isinstance(v, (int, float)) and all(isinstance(u, (int, float)) for u in values) and sum(sizes):
                extra[k] = sum(u * n for u, n in zip(values, sizes)) / sum(sizes)
            else:
                extra[k] = v
        return AttackResult(
            x_adv=torch.cat([r.x_adv for r in results]),
            success=torch.cat([r.success for r in results]),
            fooled_any=torch.cat([r.fooled_any for r in results]),
            pred=torch.cat([r.pred for r in results]),
            norm=torch.cat([r.norm for r in results]),
            attack=first.attack,
            params=dict(first.params),
            extra=extra,
            time_s=sum(r.time_s for r in results),
        )


__all__ = ["AttackResult"]
