"""Reports: a terminal leaderboard, ``report.md`` and a static ``report.html`` with PNG plots.

Every robustness number is labelled with its protocol: *paper* (the attack settings of the
paper being reproduced, e.g. one stochastic draw per gradient) or *adaptive* (the evaluation
engine's battery: APGD-CE/DLR with EOT and BPDA, Square, transfer; worst case per sample).
Repeated runs are shown as mean ± std.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


from robustcompress.experiments.report_data import FLAG_HELP, ReportData, gather  # noqa: E402,F401

def _pct(v: Optional[float], s: Optional[float] = None, n: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if n > 1 and s is not None:
        return f"{100 * v:.1f}±{100 * s:.1f}"
    return f"{100 * v:.1f}"


def _num(v: Optional[float], unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}{unit}"
    return f"{v:.3g}{unit}"


def leaderboard(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard at the main eps (strings, ready to print)."""
    eps = data.main_eps
    paper = data.attacks("paper")
    header = ["variant", "clean %"]
    header += [f"{a} {eps} paper %" for a in paper]
    has_adaptive = bool(data.attacks("adaptive"))
    if has_adaptive:
        header.append(f"worst {eps} adaptive %")
    header += ["params", "bytes", "MACs", "latency ms", "flags"]
    rows = []
    for v in data.variants:
        row = [v, _pct(data.clean(v))]
        for a in paper:
            m, s, n = data.robust(v, a, "paper", eps)
            row.append(_pct(m, s, n))
        if has_adaptive:
            m, s, n = data.robust(v, "worst-case", "adaptive", eps)
            row.append(_pct(m, s, n))
        row += [_num(data.metric(v, "params")), _num(data.metric(v, "exported_bytes"), "B"),
                _num(data.metric(v, "macs")), _num(data.metric(v, "latency_ms")),
                ",".join(data.flags(v)) or "–"]
        rows.append(row)
    return header, rows


def print_leaderboard(data: ReportData, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    header, rows = leaderboard(data)
    table = Table(title=f"robustcompress leaderboard: {data.title} (eps {data.main_eps}; "
                        "paper = papers' protocol, adaptive = EOT/BPDA/Square worst case)")
    for h in header:  # variant names whole (at most 30 characters kept), other cells fold
        table.add_column(h, justify="left" if h in ("variant", "flags") else "right",
                         overflow="fold", min_width=min(max([len(r[0]) for r in rows] + [7]), 30)
                         if h == "variant" else None)
    for r in rows:  # Text: labels like tensor[theta=0.9] are printed literally, not as markup
        table.add_row(*[Text(c) for c in r])
    console.print(table)
    if data.paper_reference:
        h, rows = paper_comparison(data)
        ref = Table(title="the paper's table values beside ours (ours: paper protocol if run, else adaptive)")
        for c in h:
            ref.add_column(c)
        for r in rows:
            ref.add_row(*[Text(c) for c in r])
        console.print(ref)


# ----------------------------------------------------------------------------------------------
# Plots


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_eps(data: ReportData, out: Path) -> list[Path]:
    """One figure per paper attack (the papers' Fig. 1 style); adaptive worst case dashed."""
    paths = []
    labels = data.eps_labels()
    if not labels:
        return paths
    eps_of = {r["eps_label"]: r["eps"] for r in data.results}
    xs = [eps_of[l] for l in labels]
    for attack in data.attacks("paper") + (["worst-case"] if data.attacks("adaptive") else []):
        protocol = "adaptive" if attack == "worst-case" else "paper"
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # distinct colours for up to 20 variants
        for v in data.variants:
            ys = [data.robust(v, attack, protocol, l)[0] for l in labels]
            clean = data.clean(v)
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot([0.0] + xs, [clean if clean is not None else float("nan")] + ys, marker="o", label=v,
                    linestyle="--" if protocol == "adaptive" else "-")
        ax.set_xlabel("eps (input units)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{attack} ({protocol} protocol)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / f"acc_vs_eps_{attack}.png"))
    return paths


def plot_pareto(data: ReportData, out: Path) -> Optional[Path]:
    """Accuracy-robustness-size: x = bytes on disk, y = robust accuracy, colour = clean accuracy."""
    pts = []
    for v in data.variants:
        size = data.metric(v, "exported_bytes")
        m, _, n = data.robust(v, "worst-case", "adaptive", data.main_eps)
        if n == 0:
            attacks = data.attacks("paper")
            m = min((data.robust(v, a, "paper", data.main_eps)[0] for a in attacks), default=float("nan"))
        if size is None or math.isnan(m):
            continue
        pts.append((v, size, m, data.clean(v) or 0.0))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sc = ax.scatter([p[1] for p in pts], [p[2] for p in pts], c=[p[3] for p in pts], cmap="viridis",
                    s=60, vmin=0, vmax=1)
    for v, sx, sy, _ in pts:
        ax.annotate(v, (sx, sy), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("exported model size (bytes)")
    ax.set_ylabel(f"robust accuracy @ {data.main_eps}")
    fig.colorbar(sc, ax=ax, label="clean accuracy")
    ax.set_title("accuracy / robustness / size")
    ax.grid(alpha=0.3)
    return _save(fig, out / "pareto.png")


def plot_robustness_vs_sparsity(data: ReportData, out: Path) -> Optional[Path]:
    pts = [(v, data.metric(v, "sparsity")) for v in data.variants if data.metric(v, "sparsity") is not None]
    pts = [(v, s) for v, s in pts if s is not None]
    if len(pts) < 2:
        return None
    pts.sort(key=lambda p: p[1])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [p[1] for p in pts]
    ax.plot(xs, [data.clean(v) for v, _ in pts], marker="o", label="clean")
    for a in data.attacks("paper"):
        ax.plot(xs, [data.robust(v, a, "paper", data.main_eps)[0] for v, _ in pts], marker="o",
                label=f"{a} @ {data.main_eps} (paper)")
    if data.attacks("adaptive"):
        ax.plot(xs, [data.robust(v, "worst-case", "adaptive", data.main_eps)[0] for v, _ in pts],
                marker="s", linestyle="--", label="worst case (adaptive)")
    ax.set_xlabel("weight sparsity")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "robustness_vs_sparsity.png")


def plot_calibration(data: ReportData, out: Path) -> Optional[Path]:
    curves = {v: data.metrics[v]["ece"]["extra"] for v in data.variants
              if "ece" in data.metrics.get(v, {}) and data.metrics[v]["ece"]["extra"].get("confidence")}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for v, c in curves.items():
        ax.plot(c["confidence"], c["accuracy"], marker="o",
                label=f"{v} (ECE {100 * data.metric(v, 'ece'):.1f}%)")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram (clean test data)")
    ax.legend(fontsize=7)
    return _save(fig, out / "calibration.png")


def plot_spectral(data: ReportData, out: Path) -> Optional[Path]:
    series = {v: data.metrics[v]["spectral"]["extra"] for v in data.variants
              if "spectral" in data.metrics.get(v, {}) and data.metrics[v]["spectral"]["extra"].get("layers")}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / len(series)
    for i, (v, s) in enumerate(series.items()):
        idx = range(len(s["layers"]))
        ax.bar([j + i * width for j in idx], s["values"], width=width, label=v)
    first = next(iter(series.values()))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(first["layers"]))])
    ax.set_xticklabels(first["layers"], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(f"||ΔW||₂ ({first.get('kind', 'reshaped matrix')})")
    ax.axhline(1.0, color="red", linestyle=":", linewidth=1)
    ax.legend(fontsize=7)
    ax.set_title("spectral norm of the quantization error per layer")
    return _save(fig, out / "spectral_norm.png")


def plot_vulnerability(data: ReportData, out: Path) -> Optional[Path]:
    series = {v: data.metrics[v]["vulnerability"]["extra"].get("per_feature") for v in data.variants
              if "vulnerability" in data.metrics.get(v, {})}
    series = {v: s for v, s in series.items() if s}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for v, vals in series.items():
        ax.hist(vals, bins=30, alpha=0.5, label=f"{v} (V={data.metric(v, 'vulnerability'):.3f})")
    ax.set_xlabel("feature vulnerability |z - z_adv| (first masked layer)")
    ax.set_ylabel("features")
    ax.legend(fontsize=7)
    return _save(fig, out / "vulnerability.png")


# ----------------------------------------------------------------------------------------------
# Markdown and HTML


def _tables(data: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    header, rows = leaderboard(data)
    tables.append((f"Leaderboard (eps {data.main_eps})", header, rows))
    for protocol in ("paper", "adaptive"):
        attacks = data.attacks(protocol)
        labels = data.eps_labels()
        if not attacks:
            continue
        for attack in attacks:
            h = ["variant"] + [f"eps {l}" for l in labels]
            rs = []
            for v in data.variants:
                row = [v]
                for l in labels:
                    m, s, n = data.robust(v, attack, protocol, l)
                    row.append(_pct(m, s, n) if n else "–")
                rs.append(row)
            tables.append((f"{attack} robust accuracy % ({protocol} protocol)", h, rs))
    minimal = [r for r in data.results if r["protocol"] == "minimal"]
    if minimal:
        h = ["variant", "attack", "r_2 mean L2", "median L2", "r_2 / ||x||", "found / correct"]
        rs = [[r["variant"], r["attack"], _num(r["mean_norm"]), _num(r["median_norm"]),
               _num(r["extra"].get("r2_relative")), f"{r['extra'].get('found', '–')}/{r['n']}"] for r in minimal]
        tables.append(("Minimal perturbations (r_2)", h, rs))
    keys = sorted({k for v in data.variants for k, m in data.metrics.get(v, {}).items() if m["value"] is not None})
    if keys:
        h = ["variant"] + keys
        rs = [[v] + [_num(data.metric(v, k)) for k in keys] for v in data.variants]
        tables.append(("Per-variant metrics", h, rs))
    if data.paper_reference:
        tables.append(("Paper table values beside ours",) + paper_comparison(data))
    return tables


def paper_comparison(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """The config's ``paper_reference`` values next to our number for the same cell."""
    h = ["variant", "attack", "eps", "paper value %", "ours %", "source"]
    rs = [[p["variant"], p["attack"], str(p.get("eps")), _pct(p["value"]), _ours(data, p), p.get("source", "")]
          for p in data.paper_reference]
    return h, rs


def _ours(data: ReportData, p: dict) -> str:
    if p["attack"] in ("clean", "none"):
        return _pct(data.clean(p["variant"]))
    label = data.label_of(p.get("eps"))
    for protocol in ("paper", "adaptive"):
        m, s, n = data.robust(p["variant"], p["attack"], protocol, label)
        if n:
            return _pct(m, s, n)
    return "–"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_report(data: ReportData, out_dir: Path, *, html_report: bool = True) -> dict[str, Path]:
    """Write plots, ``report.md`` and (optionally) ``report.html``; returns their paths."""
    import torch

    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_accuracy_vs_eps(data, plots_dir)
    for fn in (plot_robustness_vs_sparsity, plot_pareto, plot_calibration, plot_spectral, plot_vulnerability):
        p = fn(data, plots_dir)
        if p is not None:
            plots.append(p)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    intro = (f"Generated {stamp} by robustcompress with torch {torch.__version__} "
             f"({torch.get_num_threads()} threads). *paper* = the attack protocol of the paper being "
             "reproduced (e.g. one random draw per gradient step, single-draw predictions); *adaptive* = "
             "APGD-CE + APGD-DLR with EOT for stochastic models and BPDA for non-differentiable ones, "
             "Square (score-based) and transfer from the undefended model, worst case per sample, "
             "MC-averaged predictions. Repeated runs are shown as mean±std. For randomized models "
             "the two protocols judge differently: the paper protocol counts a sample as fooled "
             "if one random forward misclassifies it, the adaptive one only if the prediction "
             "averaged over many draws does (the 'fooled in at least one draw' rate is kept too), "
             "so a paper-protocol number can be lower than the adaptive worst case.")
    tables = _tables(data)
    flags = sorted({f for v in data.variants for f in data.flags(v)})
    md = [f"# robustcompress report: {data.title}", "", intro, ""]
    md += [f"> {n}" for n in data.notes]
    for title, h, rs in tables:
        md += [f"## {title}", "", _md_table(h, rs), ""]
    if flags:
        md += ["## Gradient-masking flags", ""]
        md += [f"- **{f}**: {FLAG_HELP.get(f, '')}" for f in flags]
        md.append("")
    md += ["## Plots", ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in plots]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    paths = {"md": md_path, "plots": plots_dir}
    if html_report:
        paths["html"] = _write_html(data, out_dir, intro, tables, flags, plots)
    (out_dir / "report.json").write_text(json.dumps(
        {"title": data.title, "main_eps": data.main_eps, "variants": data.variants,
         "leaderboard": dict(zip(("header", "rows"), leaderboard(data))),
         "flags": {v: data.flags(v) for v in data.variants},
         "paper_adaptive_gap": {v: [f.to_dict() for f in data.gap_flags(v)] for v in data.variants}},
        indent=2, default=float))
    return paths


def _write_html(data, out_dir: Path, intro: str, tables, flags, plots) -> Path:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>robustcompress report: {e(data.title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
             "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}"
             ".note{background:#fff8e0;padding:0.5em 1em;border-left:4px solid #e0b000}</style>",
             "</head><body>", f"<h1>robustcompress report: {e(data.title)}</h1>", f"<p>{e(intro)}</p>"]
    parts += [f"<p class=\"note\">{e(n)}</p>" for n in data.notes]
    for title, h, rs in tables:
        parts.append(f"<h2>{e(title)}</h2><table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in h)
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rs]
        parts.append("</tbody></table>")
    if flags:
        parts.append("<h2>Gradient-masking flags</h2><ul>")
        parts += [f"<li><b>{e(f)}</b>: {e(FLAG_HELP.get(f, ''))}</li>" for f in flags]
        parts.append("</ul>")
    parts.append("<h2>Plots</h2>")
    parts += [f"<figure><img src=\"plots/{e(p.name)}\" alt=\"{e(p.stem)}\"><figcaption>{e(p.stem)}"
              "</figcaption></figure>" for p in plots]
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts) + "\n")
    return path
