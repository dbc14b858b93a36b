"""Security curves (the Adversarial Pruning Benchmark's figure): robust accuracy as a function of
eps from per-sample minimal adversarial distances (FMN, FAB or DeepFool without a budget), one
curve per variant, with the point the standard (or adaptive) protocol measured at each config eps
marked on it. A point counts as robust at eps when its minimal distance is above eps (0 for a
point misclassified clean; no adversarial found: robust at every eps)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib.pyplot as plt

from robustcompress.experiments.report_data import ReportData


def robust_accuracy_curve(distances: Sequence[Optional[float]], eps: Sequence[float]) -> list[float]:
    """Share of points whose minimal distance exceeds each eps (``None``: never broken)."""
    n = max(len(distances), 1)
    d = [math.inf if x is None else float(x) for x in distances]
    return [sum(x > e for x in d) / n for e in eps]


def eps_grid(distances: Sequence[Optional[float]], points: int = 60) -> list[float]:
    """0 to a little beyond the largest finite distance found."""
    top = max((float(x) for x in distances if x is not None), default=1.0) or 1.0
    return [1.05 * top * i / (points - 1) for i in range(points)]


def _protocol_point(data: ReportData, v: str, norm: str, label: str) -> Optional[tuple[float, str]]:
    for protocol in ("standard", "adaptive"):
        m, _, n = data.robust(v, "worst-case", protocol, label)
        rows = [r for r in data.results if r["variant"] == v and r["protocol"] == protocol
                and r["eps_label"] == label and r["norm"] == norm]
        if n and rows and not math.isnan(m):
            return m, protocol
    return None


def figure_security(data: ReportData, styles: dict):
    """One panel per (norm, attack) with security rows; ``None`` when there are none."""
    rows = [r for r in data.results if r["protocol"] == "security"]
    panels = sorted({(r["norm"], r["attack"]) for r in rows})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (norm, attack) in zip(axes[0], panels):
        mine = [r for r in rows if (r["norm"], r["attack"]) == (norm, attack)]
        grid = eps_grid([d for r in mine for d in r["extra"].get("distances", [])])
        for r in mine:
            st = styles.get(r["variant"], {})
            curve = robust_accuracy_curve(r["extra"].get("distances", []), grid)
            ax.plot(grid, [100 * c for c in curve], label=r["variant"], **st)
            for label in data.eps_labels():
                point = _protocol_point(data, r["variant"], norm, label)
                eps = next((x["eps"] for x in data.results if x["eps_label"] == label), None)
                if point is not None and eps is not None:
                    ax.plot([eps], [100 * point[0]], "D", color=st.get("color"), markersize=5,
                            markeredgecolor="black", markeredgewidth=0.5)
        ax.set_xlabel(f"eps ({norm}, input units)")
        ax.set_ylabel("robust accuracy %")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        n = len(mine[0]["extra"].get("distances", []))
        n_std = {x.get("n") for x in data.results if x["protocol"] == "standard" and x["norm"] == norm} - {None, n}
        on = f" on n={'/'.join(map(str, sorted(n_std)))}" if n_std else ""  # standard_samples: a subset
        ax.set_title(f"security curves from {attack} minimal distances (n={n})"
                     f"\n◆ = standard{on} (else adaptive) protocol at a config eps", fontsize=9)
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def security_table(rows: list[dict], points: int = 7) -> tuple[list[str], list[list[str]]]:
    """Robust accuracy % at ``points`` eps values (0 to the largest distance found) per variant,
    attack and norm, from the store's ``security`` rows: the curve as a table for the terminal."""
    rows = [r for r in rows if r["protocol"] == "security"]
    grid = eps_grid([d for r in rows for d in r["extra"].get("distances", [])], points)
    header = ["variant", "attack", "norm"] + [f"{e:.2g}" for e in grid]
    body = [[r["variant"], r["attack"], r["norm"]]
            + [f"{100 * a:.0f}" for a in robust_accuracy_curve(r["extra"].get("distances", []), grid)]
            for r in rows]
    return header, body
