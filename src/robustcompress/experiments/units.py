"""Evaluation units of the runner: their randomness, their rows, and the labels they carry.

A unit's identity is the hash of everything that defines it (the runner's ``_unit`` key). That
identity also seeds it: :func:`unit_rng` gives every unit (and every batch in it,
:func:`seed_for`) random streams that depend on the unit alone, never on what the process ran
before, so a resumed run equals an uninterrupted one bit for bit, stochastic variants included.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch

from robustcompress.experiments.config import stable_hash
from robustcompress.experiments.store import ResultRow


def seed_for(*parts: Any) -> int:
    """A 60-bit seed from the hash of ``parts``."""
    return int(stable_hash(list(parts), n=15), 16)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


@contextlib.contextmanager
def unit_rng(unit: str, device: torch.device) -> Iterator[None]:
    """Inside the block the global torch RNG (CPU, and ``device`` if CUDA) is seeded from the
    unit's identity; the previous state is restored afterwards. Anything a unit draws without an
    explicit generator (a stochastic forward, a library default) is then a function of the unit."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed_for("unit", unit))
        yield


def paper_labels(items: list) -> list[str]:
    """One distinct ``attack`` label per paper-protocol item: the attack name, or, when several
    items use the same attack, the name with the settings that tell them apart
    (``pgd[steps=20]``, ``pgd[steps=1]``); identical items get ``#k``. Rows of two items never
    share a label, so neither replaces the other in tables."""
    described = [{**item.attack_params(), **{k: getattr(item, k) for k in ("eot", "mc", "norm")
                                            if getattr(item, k) is not None}} for item in items]
    labels = []
    for i, item in enumerate(items):
        same = [j for j, other in enumerate(items) if other.attack == item.attack]
        if len(same) == 1:
            labels.append(item.attack)
            continue
        keys = sorted({k for j in same for k in described[j]})
        differ = [k for k in keys if len({repr(described[j].get(k)) for j in same}) > 1]
        inner = ",".join(f"{k}={described[i].get(k)}" for k in differ)
        label = f"{item.attack}[{inner}]" if inner else item.attack
        twins = [j for j in same if described[j] == described[i]]
        if len(twins) > 1:
            label += f"#{twins.index(i) + 1}"
        labels.append(label)
    return labels


class NullWriter:
    """Where ranks other than 0 write (rows are gathered to rank 0)."""

    def add_result(self, row):
        pass

    def add_metric(self, *a, **k):
        pass


def adaptive_rows(reports: list, label: str, threat, eps_label: str, seconds: float) -> list[ResultRow]:
    """Rows of one adaptive unit from its per-batch :class:`RobustnessReport` s.

    One row per attack of the cascade with the accuracy *after* that attack (the cascade only
    attacks points still robust), and a ``worst-case`` row: robust under every attack after the
    independent MC re-evaluation, with the gradient-masking flags in ``extra``.
    """
    labels = [a.label for a in reports[0].attacks]
    cat = lambda key: torch.cat([r.per_sample[key].cpu() for r in reports])  # noqa: E731
    clean, broken, worst, fooled = cat("clean_correct"), cat("broken_by"), cat("robust"), cat("fooled_any")
    flags: dict[str, bool] = {}
    for r in reports:
        for f in r.flags:
            flags[f.name] = flags.get(f.name, False) or bool(f.raised)
    settings = reports[0].settings
    n = len(clean)
    rows = []
    for i, name in enumerate(labels):
        robust_i = clean & ((broken == -1) | (broken > i))
        rows.append(ResultRow(label, name, "adaptive", threat.norm, threat.eps, eps_label, 0, n,
                              clean_acc=clean.float().mean().item(), robust_acc=robust_i.float().mean().item(),
                              seconds=sum(r.attacks[i].seconds for r in reports)))
    from robustcompress.attacks.robustness_report import jsonable

    rows.append(ResultRow(label, "worst-case", "adaptive", threat.norm, threat.eps, eps_label, 0, n,
                          clean_acc=clean.float().mean().item(), robust_acc=worst.float().mean().item(),
                          fooled_any=fooled.float().mean().item(), seconds=seconds,
                          extra={"settings": jsonable(settings), "masking_flags": flags,
                                 "flag_details": [f.to_dict() for r in reports for f in r.flags]}))
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return m, math.sqrt(var)
