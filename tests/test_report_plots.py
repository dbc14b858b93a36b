"""Report figures and tables checked through their artists, not pixels: series per figure,
distinct variant colours, Pareto labels that neither overlap nor leave the axes, the sparsity
plot restricted to the pruning chain, and the leaderboard's non-zeros column and legend."""

import random
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
from matplotlib.text import Text

from robustcompress.experiments import plots
from robustcompress.experiments.report import leaderboard, legend, wilson_halfwidth, write_report
from robustcompress.experiments.report_data import ReportData, variant_origins

VARIANTS = ["base", "pgd_at", "tensorized", "sap", "pruned/r1", "pruned/r2", "pruned/r3", "quant3",
            "anp_vs", "squeeze", "dq", "at_sap"]
DEFENSES = [("pgd_at", "adversarial_training", "base"), ("tensorized", "tensorization", "base"),
            ("sap", "sap", "base"), ("at_sap", "sap", "pgd_at"), ("pruned", "prune", "base"),
            ("quant3", "quantize", "base"), ("anp_vs", "anp_vs", "base"), ("squeeze", "feature_squeezing", "base"),
            ("dq", "defensive_quantization", "base")]


def _row(v, attack, protocol, eps, acc):
    return {"variant": v, "attack": attack, "protocol": protocol, "eps_label": str(eps), "eps": eps, "n": 200,
            "robust_acc": acc, "clean_acc": acc if protocol == "clean" else None, "extra": {}}


def demo_like() -> ReportData:
    """Twelve variants like the demo's: most dense and the same size (crowded Pareto labels),
    a 3-bit model whose rounding gives it sparsity, and a three-round pruning chain."""
    rng = random.Random(0)
    cfg = SimpleNamespace(defenses=[SimpleNamespace(name=n, method=m, base=b) for n, m, b in DEFENSES])
    methods, parents = variant_origins(cfg, VARIANTS)
    results, metrics = [], {}
    for i, v in enumerate(VARIANTS):
        results.append(_row(v, "none", "clean", 0.0, 0.97))
        for eps in (0.05, 0.1, 0.2):
            results.append(_row(v, "fgsm", "paper", eps, rng.uniform(0.3, 0.9)))
        for eps in (0.1, 0.2):
            results += [_row(v, "apgd-ce", "adaptive", eps, 0.6), _row(v, "worst-case", "adaptive", eps,
                                                                       0.55 + 0.002 * i)]
        pruned = v.startswith("pruned")
        sparsity = {"pruned/r1": 0.5, "pruned/r2": 0.75, "pruned/r3": 0.875, "quant3": 0.41}.get(v, 0.0)
        values = {"params": 131e3, "nonzero": 131e3 * (1 - sparsity), "sparsity": sparsity,
                  "exported_bytes": (524e3 * (1 - sparsity)) if pruned else (52e3 if v == "quant3" else 524e3),
                  "macs": 537e3, "size_ratio": 1.0, "bytes_ratio": 1.0}
        metrics[v] = {k: {"value": x, "extra": {}} for k, x in values.items()}
        metrics[v]["ece"] = {"value": 0.02, "extra": {"confidence": [0.5, 0.8, 1.0], "accuracy": [0.4, 0.8, 1.0]}}
        metrics[v]["vulnerability"] = {"value": 0.1, "extra": {"per_feature": [rng.random() for _ in range(50)]}}
    return ReportData("demo", list(VARIANTS), results, metrics, main_eps="0.1", methods=methods, parents=parents)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_variant_origins_read_the_runner_labels():
    data = demo_like()
    assert data.methods["pruned/r2"] == "prune" and data.parents["pruned/r2"] == "base"
    assert data.parents["at_sap"] == "pgd_at" and "base" not in data.methods
    assert data.pruning_chains() == [("pruned", ["base", "pruned/r1", "pruned/r2", "pruned/r3"])]
    cfg = SimpleNamespace(defenses=[SimpleNamespace(name="sap", method="sap", base="base"),
                                    SimpleNamespace(name="p", method="prune", base="sap")])
    methods, parents = variant_origins(cfg, ["base", "sap[frac=0.5]", "sap[frac=1]", "sap[frac=1]+p/r1"])
    assert parents["sap[frac=1]+p/r1"] == "sap[frac=1]" and methods["sap[frac=1]+p/r1"] == "prune"


def test_colours_are_distinct_and_stable():
    names = [f"v{i}" for i in range(20)]
    styles = plots.variant_styles(names)
    assert len({s["color"] for s in styles.values()}) == 20
    assert plots.variant_styles(names[:5])["v3"] == styles["v3"]  # the same variant, the same colour


def test_accuracy_vs_eps_has_one_line_per_variant_in_its_colour():
    data = demo_like()
    fig = plots.figure_accuracy_vs_eps(data, "fgsm", "paper")
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == VARIANTS
    styles = plots.variant_styles(VARIANTS)
    assert all(ln.get_color() == styles[ln.get_label()]["color"] for ln in lines)
    assert len({ln.get_color() for ln in lines}) == len(VARIANTS)
    assert "paper protocol" in fig.axes[0].get_ylabel()


def test_small_multiples_one_panel_per_variant():
    data = demo_like()
    for fig in (plots.figure_calibration(data), plots.figure_vulnerability(data)):
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert len(panels) == len(VARIANTS)
        assert [ax.get_title().split(" (")[0] for ax in panels] == VARIANTS
    few = ReportData("t", VARIANTS[:3], data.results, {v: data.metrics[v] for v in VARIANTS[:3]})
    fig = plots.figure_calibration(few)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 1 + 3  # diagonal + one per variant


def test_pareto_front_and_labels_do_not_overlap_and_stay_inside():
    data = demo_like()
    fig = plots.figure_pareto(data)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        front = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
        assert len(front) == 1
        labels = [t for t in ax.texts if t.get_text() in VARIANTS]
        assert sorted(t.get_text() for t in labels) == sorted(VARIANTS)
        frame = ax.get_window_extent(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        for i, a in enumerate(boxes):
            assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1, labels[i]
            for j in range(i):
                assert not a.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    assert "adaptive" in fig.axes[0].get_ylabel() and "0.1" in fig.axes[0].get_ylabel()
    # the size front rises with size: each step buys robustness
    front = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "Pareto front"][0]
    assert list(front.get_ydata()) == sorted(front.get_ydata())


def test_sparsity_plot_shows_only_the_pruning_chain():
    data = demo_like()
    fig = plots.figure_robustness_vs_sparsity(data)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # clean, fgsm (paper), worst case (adaptive)
    for ln in lines:
        assert list(ln.get_xdata()) == [0.0, 50.0, 75.0, 87.5]  # base, r1, r2, r3; no quant3, no dense line


def test_leaderboard_has_non_zeros_intervals_and_a_legend(tmp_path):
    data = demo_like()
    header, rows = leaderboard(data)
    assert "non-zeros" in header and "params (dense)" in header
    nz = header.index("non-zeros")
    assert rows[VARIANTS.index("pruned/r1")][nz] == "65.50k"
    assert rows[0][1] == f"97.0 ±{100 * wilson_halfwidth(0.97, 200):.1f}"
    assert abs(wilson_halfwidth(0.62, 200) - 0.066) < 0.002
    text = " ".join(legend(data))
    assert "n = 200" in text and "Wilson" in text and "adaptive" in text and "paper" in text
    paths = write_report(data, tmp_path)
    md = paths["md"].read_text()
    assert "cumulative cascade" in md and "× smaller than parent" in md and "bytes_ratio" in md
    html = paths["html"].read_text()
    assert html.index("Leaderboard") < html.index("pareto.png") < html.index("Paper protocol")
    assert "overflow-x:auto" in html and "viewport" in html
