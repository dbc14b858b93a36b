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

from robustcompress.experiments.plots import write_plots
from robustcompress.experiments.report_data import FLAG_HELP, METRIC_GLOSSARY, ReportData, gather  # noqa: F401

Z95 = 1.96  # two-sided 95% normal quantile for the Wilson interval
PROTOCOLS = ("paper = the attack settings of the paper being reproduced (e.g. one random draw per "
             "gradient step, single-draw predictions); adaptive = APGD-CE + APGD-DLR with EOT/BPDA, "
             "Square and transfer, worst case per sample, MC-averaged predictions; standard = "
             "AutoAttack's standard battery (APGD-CE, APGD-T, FAB-T, Square-5000; APGD-CE/DLR with "
             "EOT-20 for randomized models), the number leaderboards such as RobustBench report")


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


def wilson_halfwidth(p: float, n: int, z: float = Z95) -> float:
    """Half the width of the Wilson score interval for a proportion ``p`` measured on ``n`` points."""
    if n <= 0 or math.isnan(p):
        return float("nan")
    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def _acc(m: Optional[float], s: float, runs: int, n: int) -> str:
    """``62.0 ±6.7`` (95% Wilson interval on n points), or ``62.0 ±1.2sd`` over repeated runs."""
    if m is None or math.isnan(m):
        return "–"
    if runs > 1:
        return f"{100 * m:.1f} ±{100 * s:.1f}sd"
    return f"{100 * m:.1f} ±{100 * wilson_halfwidth(m, n):.1f}" if n else f"{100 * m:.1f}"


def leaderboard(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard at the main eps (strings, ready to print)."""
    eps = data.main_eps
    paper = data.attacks("paper")
    header = ["variant", "clean %"] + [f"{a} @{eps} paper %" for a in paper]
    has_adaptive = bool(data.attacks("adaptive"))
    has_standard = bool(data.attacks("standard"))
    if has_standard:  # on a subset of the points when the config's standard_samples asks for one
        n_std = {data.n_points(v, "worst-case", "standard", eps) for v in data.variants} - {0, None}
        subset = len(n_std) == 1 and n_std != {data.n_points(v) for v in data.variants}
        header.append(f"@{eps} standard %" + (f" (n={n_std.pop()})" if subset else ""))
    if has_adaptive:
        header.append(f"worst case @{eps} adaptive %")
    header += ["params (dense)", "non-zeros", "size", "MACs", "latency ms", "flags"]
    rows = []
    for v in data.variants:
        c = data.clean(v)
        row = [v, _acc(c, 0.0, 1, data.n_points(v)) if c is not None else "–"]
        cells = ([(a, "paper") for a in paper] + ([("worst-case", "standard")] if has_standard else [])
                 + ([("worst-case", "adaptive")] if has_adaptive else []))
        for a, protocol in cells:
            m, s, runs = data.robust(v, a, protocol, eps)
            row.append(_acc(m, s, runs, data.n_points(v, a, protocol, eps)))
        row += [_num(data.metric(v, "params")), _num(data.metric(v, "nonzero")),
                _num(data.metric(v, "exported_bytes"), "B"), _num(data.metric(v, "macs")),
                _num(data.metric(v, "latency_ms")), ",".join(data.flags(v)) or "–"]
        rows.append(row)
    return header, rows


def legend(data: ReportData) -> list[str]:
    """What the leaderboard's protocols, ± and flags mean (printed and written under it)."""
    ns = sorted({r["n"] for r in data.results if r.get("n") and r["protocol"] != "minimal"})
    runs = max((data.robust(v, a, "paper", data.main_eps)[2] for v in data.variants
                for a in data.attacks("paper")), default=1)
    lines = [f"protocols: {PROTOCOLS}.",
             f"n = {'/'.join(map(str, ns)) or '?'} evaluation points per accuracy; ± = 95% Wilson interval "
             "(half width) on those points" + (f"; ±…sd = std over {runs} repeated runs" if runs > 1 else "")
             + f". Robust accuracies at eps {data.main_eps}.",
             "params (dense) counts zeros too; non-zeros is what pruning removes; size = exported bytes."]
    flags = sorted({f for v in data.variants for f in data.flags(v)})
    lines += [f"flag {f}: {FLAG_HELP.get(f, '')}" for f in flags] or ["flags: none raised."]
    return lines


def print_leaderboard(data: ReportData, console=None) -> None:
    """The leaderboard as a rich table, its legend under it, then the paper comparison."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    header, rows = leaderboard(data)
    table = Table(title=f"robustcompress leaderboard: {data.title} (eps {data.main_eps})")
    for h in header:  # variant names whole (at most 30 characters kept), other cells fold
        table.add_column(h, justify="left" if h in ("variant", "flags") else "right",
                         overflow="fold", min_width=min(max([len(r[0]) for r in rows] + [7]), 30)
                         if h == "variant" else None)
    for r in rows:  # Text: labels like tensor[theta=0.9] are printed literally, not as markup
        table.add_row(*[Text(c) for c in r])
    console.print(table)
    for line in legend(data):
        console.print("  " + line, markup=False, highlight=False)
    if data.paper_reference:
        h, rows = paper_comparison(data)
        ref = Table(title="the paper's table values beside ours (ours: paper protocol if run, else adaptive)")
        for c in h:
            ref.add_column(c)
        for r in rows:
            ref.add_row(*[Text(c) for c in r])
        console.print(ref)


# ----------------------------------------------------------------------------------------------
# Markdown and HTML


def _eps_table(data: ReportData, attack: str, protocol: str) -> tuple[list[str], list[list[str]]]:
    labels = data.eps_labels()
    rows = []
    for v in data.variants:
        row = [v]
        for lab in labels:
            m, s, n = data.robust(v, attack, protocol, lab)
            row.append(_pct(m, s, n) if n else "–")
        rows.append(row)
    return ["variant"] + [f"eps {lab}" for lab in labels], rows


def _adaptive_section(data: ReportData) -> dict:
    cascade = [a for a in data.attacks("adaptive") if a != "worst-case"]
    tables = [("adaptive worst case per sample: robust accuracy % (every attack, MC re-evaluated)",)
              + _eps_table(data, "worst-case", "adaptive")]
    for i, a in enumerate(cascade):
        standalone = " (standalone: see the paper protocol)" if a in data.attacks("paper") else ""
        tables.append((f"after {a} (cumulative cascade: {' → '.join(cascade[:i + 1])}) %{standalone}",)
                      + _eps_table(data, a, "adaptive"))
    text = ["The attacks run as a cascade: each attacks only the points still robust after the ones "
            "before it, so each table is the accuracy after that attack and all earlier ones, not the "
            "attack alone. Standalone numbers exist for the paper-protocol attacks only."]
    flags = sorted({f for v in data.variants for f in data.flags(v)})
    text += [f"Flag {f}: {FLAG_HELP.get(f, '')}" for f in flags]
    return {"title": "Adaptive evaluation", "text": text, "tables": tables,
            "plots": ["acc_vs_eps_worst-case"]}


def _metrics_section(data: ReportData) -> Optional[dict]:
    keys = {k for v in data.variants for k, m in data.metrics.get(v, {}).items() if m["value"] is not None}
    if not keys:
        return None
    order = [k for k in METRIC_GLOSSARY if k in keys] + sorted(keys - set(METRIC_GLOSSARY))
    h = ["variant"] + [METRIC_GLOSSARY.get(k, (k, ""))[0] for k in order]
    rs = [[v] + [_num(data.metric(v, k)) for k in order] for v in data.variants]
    text = [f"{METRIC_GLOSSARY[k][0]} ({k}): {METRIC_GLOSSARY[k][1]}" for k in order if k in METRIC_GLOSSARY]
    return {"title": "Compression, calibration and other per-variant metrics", "text": text,
            "tables": [("Per-variant metrics (glossary below the table)", h, rs)],
            "plots": ["robustness_vs_sparsity", "calibration", "vulnerability", "spectral_norm"]}


def _sections(data: ReportData) -> list[dict]:
    """The report after the leaderboard: one section per protocol, then the other measures."""
    out = []
    if data.attacks("paper"):
        out.append({"title": "Paper protocol", "text": [PROTOCOLS.split("; ")[0] + "."],
                    "tables": [(f"{a}: robust accuracy % (paper protocol)",) + _eps_table(data, a, "paper")
                               for a in data.attacks("paper")],
                    "plots": [f"acc_vs_eps_{a}" for a in data.attacks("paper")]})
    if any(r["protocol"] == "security" for r in data.results):
        out.append({"title": "Security curves", "tables": [], "plots": ["security_curves"],
                    "text": ["Robust accuracy against eps from each point's minimal adversarial "
                             "distance (no budget); diamonds mark what the standard (else adaptive) "
                             "protocol measured at the config's eps."]})
    if data.attacks("standard"):
        out.append({"title": "Standard protocol (AutoAttack)", "text": [PROTOCOLS.split("; ")[-1] + "."],
                    "tables": [("standard protocol: robust accuracy % (worst case over the battery)",)
                               + _eps_table(data, "worst-case", "standard")], "plots": []})
    if data.attacks("adaptive"):
        out.append(_adaptive_section(data))
    minimal = [r for r in data.results if r["protocol"] == "minimal"]
    if minimal:
        h = ["variant", "attack", "r_2 mean L2", "median L2", "r_2 / ||x||", "found / correct"]
        rs = [[r["variant"], r["attack"], _num(r["mean_norm"]), _num(r["median_norm"]),
               _num(r["extra"].get("r2_relative")), f"{r['extra'].get('found', '–')}/{r['n']}"] for r in minimal]
        out.append({"title": "Minimal perturbations (r_2)", "tables": [("Minimal perturbations (r_2)", h, rs)],
                    "text": ["Mean L2 norm of the smallest adversarial perturbation found, on correctly "
                             "classified points."], "plots": []})
    metrics = _metrics_section(data)
    if metrics:
        out.append(metrics)
    if data.paper_reference:
        out.append({"title": "Paper table values beside ours", "text": [], "plots": [],
                    "tables": [("Paper table values beside ours",) + paper_comparison(data)]})
    return out


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
    """Write plots, ``report.md``, ``report.json`` and (optionally) ``report.html``; returns paths."""
    import torch

    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(data, plots_dir)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    intro = (f"Generated {stamp} by robustcompress with torch {torch.__version__} "
             f"({torch.get_num_threads()} threads). Every number names its protocol. For randomized models "
             "the paper protocol counts a sample as fooled if one random forward misclassifies it, the "
             "adaptive one only if the prediction averaged over many draws does, so a paper-protocol "
             "number can be lower than the adaptive worst case.")
    header, rows = leaderboard(data)
    sections = _sections(data)
    md = [f"# robustcompress report: {data.title}", "", intro, ""]
    md += [f"> {n}" for n in data.notes]
    md += [f"## Leaderboard (eps {data.main_eps})", "", _md_table(header, rows), ""]
    md += [f"- {line}" for line in legend(data)] + [""]
    if "pareto" in plots:
        md += ["![pareto](plots/pareto.png)", ""]
    for sec in sections:
        md += [f"## {sec['title']}", ""]
        for title, h, rs in sec["tables"]:
            md += [f"### {title}", "", _md_table(h, rs), ""]
        md += [f"- {t}" for t in sec["text"]] + [""]
        md += [f"![{p}](plots/{plots[p].name})" for p in sec["plots"] if p in plots] + [""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    paths = {"md": md_path, "plots": plots_dir}
    if html_report:
        paths["html"] = _write_html(data, out_dir, intro, sections, plots)
    (out_dir / "report.json").write_text(json.dumps(
        {"title": data.title, "main_eps": data.main_eps, "variants": data.variants,
         "leaderboard": dict(zip(("header", "rows"), (header, rows))), "legend": legend(data),
         "flags": {v: data.flags(v) for v in data.variants},
         "paper_adaptive_gap": {v: [f.to_dict() for f in data.gap_flags(v)] for v in data.variants},
         "metric_glossary": {k: {"column": c, "meaning": m} for k, (c, m) in METRIC_GLOSSARY.items()}},
        indent=2, default=float))
    return paths


CSS = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;color:#222;"
       "line-height:1.4}.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}"
       "table{border-collapse:collapse;margin:0.5em 0;font-size:13px;white-space:nowrap}"
       "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0;position:sticky;top:0}"
       "td:first-child,th:first-child{text-align:left;position:sticky;left:0;background:#fafafa}"
       "img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:0.8em 0}"
       "ul.legend{font-size:13px;color:#444}.note{background:#fff8e0;padding:0.5em 1em;"
       "border-left:4px solid #e0b000}h3{font-size:1em;margin-bottom:0.2em}"
       "@media (max-width:700px){body{padding:0 0.4em}table{font-size:12px}}")


def _html_table(title: str, h: list[str], rs: list[list[str]], level: str = "h3") -> list[str]:
    e = html.escape
    out = [f"<{level}>{e(title)}</{level}><div class=\"scroll\"><table><thead><tr>"
           + "".join(f"<th>{e(c)}</th>" for c in h) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rs]
    return out + ["</tbody></table></div>"]


def _write_html(data, out_dir: Path, intro: str, sections: list[dict], plots: dict[str, Path]) -> Path:
    """Leaderboard and legend, the Pareto plot, then one section per protocol/measure."""
    e = html.escape

    def fig(name: str) -> str:
        if name not in plots:
            return ""
        return (f"<figure><img src=\"plots/{e(plots[name].name)}\" alt=\"{e(name)}\" loading=\"lazy\">"
                f"<figcaption>{e(name)}</figcaption></figure>")

    header, rows = leaderboard(data)
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             f"<title>robustcompress report: {e(data.title)}</title><style>{CSS}</style>",
             "</head><body>", f"<h1>robustcompress report: {e(data.title)}</h1>"]
    parts += [f"<p class=\"note\">{e(n)}</p>" for n in data.notes]
    parts += _html_table(f"Leaderboard (eps {data.main_eps})", header, rows, "h2")
    parts.append("<ul class=\"legend\">" + "".join(f"<li>{e(x)}</li>" for x in legend(data)) + "</ul>")
    parts.append(fig("pareto"))
    for sec in sections:
        parts.append(f"<h2>{e(sec['title'])}</h2>")
        for title, h, rs in sec["tables"]:
            parts += _html_table(title, h, rs)
        if sec["text"]:
            parts.append("<ul class=\"legend\">" + "".join(f"<li>{e(t)}</li>" for t in sec["text"]) + "</ul>")
        parts += [fig(p) for p in sec["plots"] if p in plots]
    parts += [f"<p><small>{e(intro)}</small></p>", "</body></html>"]
    path = out_dir / "report.html"
    path.write_text("\n".join(x for x in parts if x) + "\n")
    return path
