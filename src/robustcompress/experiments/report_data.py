"""What a report shows, gathered from the results store for one config: rows, metrics, the
main eps, and the flags (the adaptive units' gradient-masking flags plus the paper-vs-adaptive
gap, which only a report that holds both protocols can see)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from robustcompress.attacks.checks import EXPLANATIONS, check_paper_gap
from robustcompress.experiments.config import eps_matches
from robustcompress.experiments.units import mean_std

# what each gradient-masking flag means: the checks' own explanations (one source of truth)
FLAG_HELP = EXPLANATIONS

# per-variant metric keys (as stored and in report.json) -> (column name, what it means)
METRIC_GLOSSARY = {
    "params": ("params (dense)", "all parameters, zeros included"),
    "nonzero": ("non-zeros", "parameters that are not zero (what pruning removes)"),
    "density": ("density", "non-zeros / params"),
    "sparsity": ("weight sparsity", "fraction of zero weights in the prunable layers (also from rounding)"),
    "mean_bits": ("bits / weight", "mean stored bits per weight (32 = float32)"),
    "exported_bytes": ("size (bytes)", "bytes of the exported model file"),
    "dense_bytes": ("fp32 size (bytes)", "4 bytes x params: the uncompressed float32 size"),
    "size_ratio": ("× smaller than fp32", "fp32 size / exported size"),
    "bytes_ratio": ("× smaller than parent", "parent's exported size / this exported size"),
    "macs": ("MACs", "multiply-accumulates of one input through the executed graph"),
    "macs_ratio": ("× fewer MACs than parent", "parent's MACs / these MACs"),
    "latency_ms": ("latency (ms)", "median CPU latency for one input (batch 1)"),
    "ece": ("ECE", "expected calibration error on clean test data (0 = calibrated)"),
    "vulnerability": ("vulnerability V", "mean |z - z_adv| of the first masked layer's features"),
    "spectral": ("max ||ΔW||₂", "largest spectral norm of a layer's quantization error"),
    "clever_l2": ("CLEVER (L2)", "mean CLEVER robustness score (estimated minimal L2 distortion)"),
}


@dataclass
class ReportData:
    """Everything a report shows, gathered from the store for one config."""

    title: str
    variants: list[str]
    results: list[dict]
    metrics: dict[str, dict[str, dict]]  # variant -> key -> {"value", "extra"}
    notes: list[str] = field(default_factory=list)
    paper_reference: list[dict] = field(default_factory=list)
    main_eps: Optional[str] = None
    methods: dict[str, str] = field(default_factory=dict)  # variant -> defense method ("base": none)
    parents: dict[str, str] = field(default_factory=dict)  # variant -> the variant it was built from

    def metric(self, variant: str, key: str) -> Optional[float]:
        m = self.metrics.get(variant, {}).get(key)
        return None if m is None else m["value"]

    def clean(self, variant: str) -> Optional[float]:
        rows = [r for r in self.results if r["variant"] == variant and r["protocol"] == "clean"]
        return rows[0]["clean_acc"] if rows else None

    def robust(self, variant: str, attack: str, protocol: str, eps_label: str) -> tuple[float, float, int]:
        vals = [r["robust_acc"] for r in self.results if r["variant"] == variant and r["attack"] == attack
                and r["protocol"] == protocol and r["eps_label"] == eps_label]
        m, s = mean_std(vals)
        return m, s, len(vals)

    def n_points(self, variant: str, attack: str = "none", protocol: str = "clean",
                 eps_label: Optional[str] = None) -> int:
        """Evaluation points behind one cell (0 when it was not measured)."""
        rows = [r for r in self.results if r["variant"] == variant and r["attack"] == attack
                and r["protocol"] == protocol and (eps_label is None or r["eps_label"] == eps_label)]
        return int(rows[0].get("n") or 0) if rows else 0

    def pruning_chains(self) -> list[tuple[str, list[str]]]:
        """``(name, labels)`` per pruning chain: the parent, then its ``prune`` rounds in order."""
        chains: dict[tuple[str, str], list[str]] = {}
        for v in self.variants:
            if self.methods.get(v) == "prune" and v in self.parents:
                stem = v.split("/")[0]
                chains.setdefault((stem, self.parents[v]), []).append(v)
        out = []
        for (stem, parent), members in chains.items():
            head = [parent] if parent in self.variants else []
            out.append((stem if len(chains) == 1 else f"{stem} from {parent}", head + members))
        return out

    def eps_labels(self) -> list[str]:
        seen: dict[str, float] = {}
        for r in self.results:
            if r["protocol"] in ("paper", "adaptive", "standard"):
                seen.setdefault(r["eps_label"], r["eps"])
        return [k for k, _ in sorted(seen.items(), key=lambda kv: kv[1])]

    def label_of(self, eps) -> str:
        """The run's label for an eps written in the config ("8/255" or 8 name the threat eps
        labelled "8.0/255"); ``str(eps)`` when no threat matches."""
        return next((lab for lab in self.eps_labels() if eps_matches(eps, lab)), str(eps))

    def attacks(self, protocol: str) -> list[str]:
        out: list[str] = []
        for r in self.results:
            if r["protocol"] == protocol and r["attack"] not in out:
                out.append(r["attack"])
        return out

    def flags(self, variant: str) -> list[str]:
        """Raised gradient-masking flags of the variant's adaptive units, plus
        ``paper_adaptive_gap`` when a paper-protocol number sits far above the adaptive worst
        case at the same eps (only the report has both)."""
        raised = set()
        for r in self.results:
            if r["variant"] == variant and r["protocol"] == "adaptive":
                for name, on in (r["extra"].get("masking_flags") or {}).items():
                    if on:
                        raised.add(name)
        if any(f.raised for f in self.gap_flags(variant)):
            raised.add("paper_adaptive_gap")
        return sorted(raised)

    def gap_flags(self, variant: str) -> list:
        """One :func:`~robustcompress.attacks.checks.check_paper_gap` per eps with an adaptive
        worst case: the strongest paper-protocol attack (lowest accuracy) against it, so a weak
        single-step attack alone does not raise it."""
        out = []
        for label in self.eps_labels():
            worst, _, n = self.robust(variant, "worst-case", "adaptive", label)
            papers = [(self.robust(variant, a, "paper", label)[0], a) for a in self.attacks("paper")]
            papers = [(m, a) for m, a in papers if not math.isnan(m)]
            if n and papers and not math.isnan(worst):
                acc, attack = min(papers)
                out.append(check_paper_gap(acc, worst, f"{attack} at {label}"))
        return out


def gather(store, cfg, variants: list[str], unit_keys: Optional[list[str]] = None) -> ReportData:
    results = store.results(units=unit_keys)
    metrics: dict[str, dict[str, dict]] = defaultdict(dict)
    for m in store.metrics(units=unit_keys):
        metrics[m["variant"]][m["key"]] = {"value": m["value"], "extra": m["extra"]}
    main = cfg.report.main_eps
    methods, parents = variant_origins(cfg, variants)
    data = ReportData(title=cfg.name, variants=variants, results=results, metrics=dict(metrics),
                      methods=methods, parents=parents,
                      paper_reference=[p.model_dump(mode="json") for p in cfg.paper_reference],
                      main_eps=None if main is None else str(main))
    if data.main_eps is None:
        labels = data.eps_labels()
        data.main_eps = labels[len(labels) // 2] if labels else None
    else:
        data.main_eps = data.label_of(data.main_eps)
    return data


def variant_origins(cfg, variants: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Each variant's defense method and parent variant, read back from its label (the runner
    labels ``[parent+]name[grid]/suffix``) and the config's defenses."""
    methods, parents = {}, {}
    by_name = {d.name: d for d in cfg.defenses}
    for v in variants:
        best = None
        for name in by_name:
            m = re.search(r"(?:^|\+)" + re.escape(name) + r"(\[[^\]]*\])?(/[^+]*)?$", v)
            if m and (best is None or len(name) > len(best[0])):
                best = (name, m)
        if best is None:
            continue
        d, m = by_name[best[0]], best[1]
        methods[v] = d.method
        if m.start() > 0:
            parents[v] = v[:m.start()]
        else:
            parents[v] = next((p for p in variants if p == d.base or p.split("[")[0].split("/")[0] == d.base),
                              d.base)
    return methods, parents
