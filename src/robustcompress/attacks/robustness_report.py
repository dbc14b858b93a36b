"""What :func:`robustcompress.attacks.evaluate_robustness` returns: the cascade's records, the
verdicts per sample, the gradient-masking flags and every setting needed to reproduce it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from robustcompress.attacks.checks import Flag


@dataclass
class AttackRecord:
    """One attack of the cascade and what it achieved on the points still robust before it."""

    label: str
    attack: str
    kind: str
    params: dict
    attempted: int
    broken: int
    robust_accuracy: float
    fooled_any: int
    disagreements: int
    seconds: float
    seed: int

    def to_dict(self) -> dict:
        return {k: jsonable(v) for k, v in self.__dict__.items()}


@dataclass
class RobustnessReport:
    """Result of :func:`evaluate_robustness`.

    Attributes
    ----------
    n : number of inputs evaluated.
    clean_accuracy : accuracy on the clean inputs (MC-averaged prediction if stochastic).
    robust_accuracy : worst case over the whole battery, after independent re-evaluation.
    fooled_any_rate : share of inputs misclassified in at least one draw by some attack (equal
        to ``1 - robust_accuracy`` for deterministic models).
    attacks : one :class:`AttackRecord` per attack, in cascade order (``robust_accuracy`` there is
        the accuracy after that attack).
    flags : gradient-masking checks (:class:`robustcompress.attacks.checks.Flag`).
    per_sample : ``clean_correct``, ``robust``, ``fooled_any`` (bool ``[n]``), ``broken_by``
        (``[n]`` int: index into ``attacks``, ``-1`` still robust, ``-2`` misclassified clean) and
        ``true_prob`` (``[n]``: MC-averaged probability of the label at the kept point, one
        more independent draw; the worst case per sample).
    settings : EOT, MC, BPDA, seeds, battery, threat model and model properties.
    timings : seconds for the clean pass, each attack, the checks and the total.
    x_adv : the adversarial kept per sample (the breaking one, else the last tried); not in JSON.
    """

    n: int
    clean_accuracy: float
    robust_accuracy: float
    fooled_any_rate: float
    attacks: list[AttackRecord]
    flags: list[Flag]
    per_sample: dict[str, torch.Tensor]
    settings: dict
    timings: dict
    x_adv: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def raised_flags(self) -> list[Flag]:
        return [f for f in self.flags if f.raised]

    def to_dict(self) -> dict:
        """JSON-serialisable summary (per-sample tensors become lists; ``x_adv`` is left out)."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "fooled_any_rate": self.fooled_any_rate,
            "attacks": [a.to_dict() for a in self.attacks],
            "flags": [f.to_dict() for f in self.flags],
            "per_sample": {k: v.tolist() for k, v in self.per_sample.items()},
            "settings": jsonable(self.settings),
            "timings": jsonable(self.timings),
        }

    def table(self):
        """A :class:`rich.table.Table` of the cascade (one row per attack)."""
        from rich.table import Table

        t = Table(title=f"Robustness ({self.settings.get('threat', '')})", show_lines=False)
        for col in ("attack", "kind", "attacked", "broken", "robust acc", "fooled any", "time (s)"):
            t.add_column(col, justify="left" if col in ("attack", "kind") else "right")
        t.add_row("clean", "-", str(self.n), str(self.n - int(self.per_sample["clean_correct"].sum())),
                  f"{self.clean_accuracy:.2%}", "-", f"{self.timings.get('clean', 0.0):.1f}")
        for a in self.attacks:
            t.add_row(a.label, a.kind, str(a.attempted), str(a.broken), f"{a.robust_accuracy:.2%}",
                      str(a.fooled_any), f"{a.seconds:.1f}")
        t.add_row("worst", "", "", "", f"{self.robust_accuracy:.2%}",
                  f"{self.fooled_any_rate:.2%}", f"{self.timings.get('total', 0.0):.1f}")
        return t

    def render(self, console=None) -> None:
        """Print the table, the settings line and every flag (raised ones in red)."""
        from rich.console import Console

        console = console or Console()
        console.print(self.table())
        s = self.settings
        console.print(f"EOT samples {s['eot_samples']}, MC samples {s['mc_samples']}, "
                      f"BPDA {s['bpda']}, seed {s['seed']}")
        for f in self.flags:
            style = "bold red" if f.raised else "green"
            console.print(f.line(), style=style, markup=False, highlight=False)


def jsonable(v: Any) -> Any:
    """Tensors as lists, non-finite floats as None, anything else unknown as its str."""
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)
