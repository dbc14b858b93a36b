"""The report's figures: one question per figure, one colour per variant in every figure.

Each ``figure_*`` builds a matplotlib ``Figure`` (or ``None`` when the data lacks it) so tests
can inspect its artists; :func:`write_plots` saves them as PNGs. Axes name the protocol, the
eps and the units; many series are drawn as small multiples rather than on one axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from robustcompress.experiments.report_data import ReportData  # noqa: E402

# tab20 reordered: the ten strong colours first, then their light partners (20 distinct)
PALETTE = [plt.cm.tab20.colors[i] for i in range(0, 20, 2)] + [plt.cm.tab20.colors[i] for i in range(1, 20, 2)]
LINESTYLES = ["-", "--", ":", "-."]
SMALL_MULTIPLES_ABOVE = 6  # more series than this: one panel per variant
DPI = 110


def variant_styles(variants: list[str]) -> dict[str, dict]:
    """A stable ``{variant: {"color", "linestyle"}}``: distinct colours for up to 20 variants,
    then the colours again with another line style."""
    return {v: {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[(i // len(PALETTE)) % 4]}
            for i, v in enumerate(variants)}


def _pct_axis(ax, label: str) -> None:
    ax.set_ylabel(label)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)


def worst_case(data: ReportData, v: str) -> tuple[float, str]:
    """The variant's robust accuracy (%) at the main eps and the protocol behind it: the adaptive
    worst case when measured, else the strongest paper-protocol attack."""
    m, _, n = data.robust(v, "worst-case", "adaptive", data.main_eps)
    if n:
        return 100 * m, "adaptive worst case"
    vals = [data.robust(v, a, "paper", data.main_eps)[0] for a in data.attacks("paper")]
    vals = [x for x in vals if not math.isnan(x)]
    return (100 * min(vals) if vals else float("nan")), "paper protocol, strongest attack"


def figure_accuracy_vs_eps(data: ReportData, attack: str, protocol: str):
    """Robust accuracy vs eps for one attack, every variant (eps 0 = clean accuracy)."""
    labels = data.eps_labels()
    eps_of = {r["eps_label"]: r["eps"] for r in data.results}
    styles = variant_styles(data.variants)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for v in data.variants:
        ys = [100 * data.robust(v, attack, protocol, lab)[0] for lab in labels]
        if all(math.isnan(y) for y in ys):
            continue
        clean = data.clean(v)
        pts = [(0.0, 100 * clean if clean is not None else math.nan)] + list(zip([eps_of[lab] for lab in labels], ys))
        pts = [(x, y) for x, y in pts if not math.isnan(y)]  # eps not measured: joined, not broken
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v, color=styles[v]["color"],
                linestyle="--" if protocol == "adaptive" else styles[v]["linestyle"])
    ax.set_xlabel("eps (input units; 0 = clean accuracy)")
    _pct_axis(ax, f"robust accuracy % ({protocol} protocol)")
    name = "adaptive worst case per sample" if attack == "worst-case" else attack
    ax.set_title(f"{name} ({protocol} protocol, n={data.n_points(data.variants[0]) or '?'})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def _front(pts: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The non-dominated points (smaller x and higher y are better), by increasing x."""
    out, best = [], -math.inf
    for p in sorted(pts, key=lambda p: (p[1], -p[2])):
        if p[2] > best:
            out.append(p)
            best = p[2]
    return out


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def label_box(t, renderer):
    """The text's own box in display pixels (an annotation's leader line excluded)."""
    if hasattr(t, "update_positions"):  # an annotation places its text only when drawn
        t.update_positions(renderer)
    return Text.get_window_extent(t, renderer)


def place_labels(ax, pts: list[tuple[str, float, float]], fontsize: float = 7) -> list:
    """Annotate each point with its name at the first nearby offset whose text box overlaps no
    placed label, marker or legend and stays inside the axes (greedy, nearest offsets first)."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    offsets = [(dx * r, dy * r) for r in (1, 2, 3.5, 5) for dx, dy in
               ((5, 4), (5, -10), (-5, 4), (-5, -10), (0, 9), (0, -15), (9, -3), (-9, -3))]
    obstacles = [Bbox.from_bounds(*(ax.transData.transform((x, y)) - 4), 8, 8) for _, x, y in pts]
    if ax.get_legend() is not None:
        obstacles.append(ax.get_legend().get_window_extent(renderer))
    texts = []
    for name, x, y in sorted(pts, key=lambda p: -p[2]):
        best = None
        for dx, dy in offsets:
            far = abs(dx) + abs(dy) >= 16
            t = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                            ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"} if far else None)
            box = label_box(t, renderer).expanded(1.04, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            score = sum(_overlaps(box, b) for b in obstacles) + (0 if inside else 100)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, t, box)
            else:
                t.remove()
            if score == 0:
                break
        obstacles.append(best[2])
        texts.append(best[1])
    return texts


def _pareto_panel(ax, data: ReportData, key: str, xlabel: str) -> None:
    styles = variant_styles(data.variants)
    pts = []
    for v in data.variants:
        x, (y, _) = data.metric(v, key), worst_case(data, v)
        if x is not None and x > 0 and not math.isnan(y):
            pts.append((v, float(x), y))
    for v, x, y in pts:
        ax.scatter([x], [y], color=styles[v]["color"], s=40, zorder=3, edgecolor="black", linewidth=0.4)
    front = _front(pts)
    if front:
        xs = [p[1] for p in front]
        ys = [p[2] for p in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1, alpha=0.6, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.set_ylim(max(0.0, min(p[2] for p in pts) - 12), min(105.0, max(p[2] for p in pts) + 12))
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(unit="B" if key == "exported_bytes" else "", sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, loc="lower right")
    ax._pareto_points = pts  # for place_labels after the layout is fixed


def figure_pareto(data: ReportData):
    """Size (and MACs when measured) vs robust accuracy at the main eps, Pareto front drawn,
    labels placed without overlap."""
    has = lambda key: any(data.metric(v, key) for v in data.variants)  # noqa: E731
    if not has("exported_bytes") or not any(not math.isnan(worst_case(data, v)[0]) for v in data.variants):
        return None
    panels = [("exported_bytes", "exported model size (bytes, log)")]
    if has("macs"):
        panels.append(("macs", "MACs per input (log)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), sharey=True, squeeze=False)
    protocol = next((worst_case(data, v)[1] for v in data.variants), "")
    for ax, (key, xlabel) in zip(axes[0], panels):
        _pareto_panel(ax, data, key, xlabel)
    axes[0][0].set_ylabel(f"robust accuracy % @ eps {data.main_eps}\n({protocol})")
    fig.suptitle(f"robustness vs cost ({protocol}, eps {data.main_eps}); front: no variant is "
                 "both smaller and more robust", fontsize=9)
    fig.tight_layout()
    for ax in axes[0]:
        place_labels(ax, ax._pareto_points)
    fig._fixed_layout = True
    return fig


def figure_robustness_vs_sparsity(data: ReportData):
    """Accuracy vs weight sparsity along each pruning chain only (parent, then the rounds)."""
    chains = [(name, [v for v in vs if data.metric(v, "sparsity") is not None])
              for name, vs in data.pruning_chains()]
    chains = [(name, vs) for name, vs in chains if len(vs) >= 2]
    if not chains:
        return None
    measures = [("clean", lambda v: data.clean(v), "-")]
    measures += [(f"{a} (paper)", lambda v, a=a: data.robust(v, a, "paper", data.main_eps)[0], "-")
                 for a in data.attacks("paper")]
    if data.attacks("adaptive"):
        measures.append(("worst case (adaptive)",
                         lambda v: data.robust(v, "worst-case", "adaptive", data.main_eps)[0], "--"))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    markers = "osD^v"
    for ci, (name, vs) in enumerate(chains):
        vs = sorted(vs, key=lambda v: data.metric(v, "sparsity"))
        xs = [100 * data.metric(v, "sparsity") for v in vs]
        for mi, (label, fn, ls) in enumerate(measures):
            ys = [100 * (fn(v) if fn(v) is not None else math.nan) for v in vs]
            ax.plot(xs, ys, marker=markers[ci % len(markers)], linestyle=ls, color=PALETTE[mi],
                    label=label if len(chains) == 1 else f"{label}, {name}")
    ax.set_xlabel("weight sparsity % (pruning chain: " + "; ".join(" → ".join(vs) for _, vs in chains) + ")",
                  fontsize=8)
    _pct_axis(ax, f"accuracy % (robust at eps {data.main_eps})")
    ax.set_title("robustness along the pruning chain")
    ax.legend(fontsize=7)
    return fig


def _grid(n: int, panel: float = 2.4):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 0.6, panel * rows + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _missing_note(fig, data: ReportData, shown) -> None:
    """Say which variants have no data here instead of silently leaving them out."""
    missing = [v for v in data.variants if v not in shown]
    if missing:
        fig.text(0.99, 0.005, "not measured: " + ", ".join(missing), ha="right", va="bottom", fontsize=7,
                 color="grey")


def figure_calibration(data: ReportData):
    """Reliability diagrams on clean test data; one panel per variant when there are many."""
    curves = {v: data.metrics[v]["ece"]["extra"] for v in data.variants
              if "ece" in data.metrics.get(v, {}) and data.metrics[v]["ece"]["extra"].get("confidence")}
    if not curves:
        return None
    styles = variant_styles(data.variants)
    many = len(curves) > SMALL_MULTIPLES_ABOVE
    fig, axes = _grid(len(curves)) if many else plt.subplots(figsize=(5.5, 4.6))
    axes = axes if many else [axes] * len(curves)
    for ax in dict.fromkeys(axes):  # the diagonal once per panel
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for ax, (v, c) in zip(axes, curves.items()):
        ece = data.metric(v, "ece")
        label = f"{v} (ECE {100 * ece:.1f}%)" if ece is not None else v
        ax.plot(c["confidence"], c["accuracy"], marker="o", markersize=3, label=label, **styles[v])
        if many:
            ax.set_title(label, fontsize=8)
    fig.supxlabel("confidence (clean test data)", fontsize=9)
    fig.supylabel("accuracy", fontsize=9)
    fig.suptitle("reliability diagrams (diagonal = perfectly calibrated)", fontsize=10)
    _missing_note(fig, data, curves)
    if not many:
        axes[0].legend(fontsize=7)
    return fig


def figure_vulnerability(data: ReportData):
    """Histogram of feature vulnerability |z - z_adv| per variant (one panel each when many)."""
    series = {v: data.metrics[v]["vulnerability"]["extra"].get("per_feature") for v in data.variants
              if "vulnerability" in data.metrics.get(v, {})}
    series = {v: s for v, s in series.items() if s}
    if not series:
        return None
    styles = variant_styles(data.variants)
    many = len(series) > SMALL_MULTIPLES_ABOVE
    fig, axes = _grid(len(series)) if many else plt.subplots(figsize=(6.5, 4.2))
    axes = axes if many else [axes] * len(series)
    lo, hi = min(min(s) for s in series.values()), max(max(s) for s in series.values())
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30  # the same bins in every panel
    for ax, (v, vals) in zip(axes, series.items()):
        label = f"{v} (V={data.metric(v, 'vulnerability'):.3f})"
        ax.hist(vals, bins=bins, alpha=0.8 if many else 0.5, color=styles[v]["color"], label=label)
        if many:
            ax.set_title(label, fontsize=8)
    fig.supxlabel("feature vulnerability |z - z_adv| (first masked layer, PGD-10)", fontsize=9)
    fig.supylabel("features", fontsize=9)
    _missing_note(fig, data, series)
    if not many:
        axes[0].legend(fontsize=7)
    return fig


def figure_spectral(data: ReportData):
    """||ΔW||₂ of the quantization error per layer, one bar group per layer."""
    series = {v: data.metrics[v]["spectral"]["extra"] for v in data.variants
              if "spectral" in data.metrics.get(v, {}) and data.metrics[v]["spectral"]["extra"].get("layers")}
    if not series:
        return None
    styles = variant_styles(data.variants)
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    width = 0.8 / len(series)
    for i, (v, s) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(s["layers"]))], s["values"], width=width, label=v,
               color=styles[v]["color"])
    first = next(iter(series.values()))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(first["layers"]))])
    ax.set_xticklabels(first["layers"], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(f"||ΔW||₂ ({first.get('kind', 'reshaped matrix')})")
    ax.axhline(1.0, color="red", linestyle=":", linewidth=1)
    ax.legend(fontsize=7)
    ax.set_title("spectral norm of the quantization error per layer")
    return fig


def _save(fig, path: Path) -> Path:
    if not getattr(fig, "_fixed_layout", False):
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if not getattr(fig, "_fixed_layout", False) else None)
    plt.close(fig)
    return path


def write_plots(data: ReportData, out: Path) -> dict[str, Path]:
    """Save every figure the data supports; returns ``{name: path}`` (names are file stems)."""
    figs: dict[str, Optional[object]] = {"pareto": figure_pareto(data)}
    if data.eps_labels():
        for a in data.attacks("paper"):
            figs[f"acc_vs_eps_{a}"] = figure_accuracy_vs_eps(data, a, "paper")
        if data.attacks("adaptive"):
            figs["acc_vs_eps_worst-case"] = figure_accuracy_vs_eps(data, "worst-case", "adaptive")
    from robustcompress.experiments.security import figure_security

    figs["security_curves"] = figure_security(data, variant_styles(data.variants))
    figs.update(robustness_vs_sparsity=figure_robustness_vs_sparsity(data),
                calibration=figure_calibration(data), spectral_norm=figure_spectral(data),
                vulnerability=figure_vulnerability(data))
    return {name: _save(fig, Path(out) / f"{name}.png") for name, fig in figs.items() if fig is not None}
