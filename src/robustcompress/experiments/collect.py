"""Per-variant metrics gathered by the runner (pure functions of a model, data and settings).

Each metric yields ``(key, value, extra)`` rows for the results store:

============== ============================================================================
compression    params, nonzero, density, mean_bits, exported_bytes, macs, latency_ms
               (:mod:`robustcompress.metrics.compression`: bytes of the exported model,
               MACs of the executed graph, measured latency)
sparsity       weight sparsity (total; per layer in ``extra``)
calibration    ECE of the MC-averaged clean predictions; reliability bins in ``extra``
spectral       max ||ΔW||₂ over layers against the parent model (quantized variants only);
               per layer in ``extra``
vulnerability  V of Madaan et al. against PGD-10 at the first threat's largest eps (one random
               draw per step for stochastic models); per-feature values in ``extra``
clever         mean CLEVER score (L2) over a few correctly classified points
============== ============================================================================
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

Row = tuple[str, Optional[float], dict]


def collect_metrics(model: nn.Module, info, x: torch.Tensor, y: torch.Tensor, cfg, device, *,
                    generator: torch.Generator, reference: Optional[nn.Module] = None) -> Iterator[Row]:
    m = cfg.metrics
    model.eval()
    if m.compression:
        yield from compression_rows(model, info, reference)
    yield from sparsity_rows(model)
    if m.calibration:
        yield from calibration_rows(model, x, y, cfg.evaluation.mc_samples, generator, device)
    if m.spectral and reference is not None and _quantized(model):
        yield from spectral_rows(model, reference, info)
    if m.vulnerability and cfg.evaluation.threats:
        yield from vulnerability_rows(model, x, y, cfg, info, generator, device)
    if m.clever:
        yield from clever_rows(model, x, y, device, generator)


def _quantized(model: nn.Module) -> bool:
    return any(getattr(mod, "weight_bits", None) for mod in model.modules())


def compression_rows(model, info, reference=None) -> Iterator[Row]:
    from robustcompress.metrics.compression import compression_report

    rep = compression_report(model, info, reference=reference)
    for k, v in rep.items():
        yield k, float(v), {}


def sparsity_rows(model) -> Iterator[Row]:
    from robustcompress.metrics.sparsity import weight_sparsity

    ws = weight_sparsity(model)
    yield "sparsity", ws.pop("total"), {"per_layer": ws}


def calibration_rows(model, x, y, mc_samples, generator, device) -> Iterator[Row]:
    from robustcompress.attacks import mc_predict
    from robustcompress.metrics.calibration import reliability

    # mc_predict draws once for deterministic models and mc_samples times for stochastic ones
    probs = torch.cat([mc_predict(model, x[i:i + 256].to(device), mc_samples=mc_samples, generator=generator).cpu()
                       for i in range(0, len(y), 256)])
    rel = reliability(probs, y)
    filled = rel.count > 0  # empty bins have no accuracy to plot
    yield "ece", float(rel.ece), {"confidence": rel.confidence[filled].tolist(),
                                  "accuracy": rel.accuracy[filled].tolist(),
                                  "count": rel.count[filled].tolist()}


def spectral_rows(model, reference, info) -> Iterator[Row]:
    from robustcompress.metrics.spectral import quantization_error_norms

    rows = quantization_error_norms(model, reference, info.shape, iters=30)
    if not rows:
        return
    yield "spectral", max(r["reshaped"] for r in rows), {
        "layers": [r["layer"] for r in rows], "values": [r["reshaped"] for r in rows],
        "operator": [r["operator"] for r in rows], "kind": "reshaped matrix O x (I k k)"}


def vulnerability_rows(model, x, y, cfg, info, generator, device) -> Iterator[Row]:
    from robustcompress.attacks import ThreatModel, run_attack
    from robustcompress.metrics.vulnerability import measure_vulnerability

    t = cfg.evaluation.threats[0]
    threat = ThreatModel.from_spec(norm=t.norm, eps=t.eps[-1], info=info, eps_scale=t.eps_scale)

    def attack(mdl, xb, yb):  # one draw per step: V compares features of one noisy forward each
        return run_attack("pgd", mdl, xb, yb, threat, steps=10, eot_samples=1, mc_samples=1,
                          generator=generator).x_adv

    rep = measure_vulnerability(model, x.to(device), y.to(device), attack)
    first = next(iter(rep.per_feature.values()), None)
    yield "vulnerability", float(rep.V), {
        "per_layer": rep.per_layer, "per_feature": [] if first is None else first.flatten().tolist()}


def clever_rows(model, x, y, device, generator, n_points: int = 5) -> Iterator[Row]:
    from robustcompress.metrics.robustness_metrics import clever

    with torch.no_grad():
        correct = (model(x.to(device)).argmax(1).cpu() == y).nonzero().flatten()[:n_points]
    if len(correct) == 0:
        return
    scores = clever(model, x[correct].to(device), generator=generator)
    yield "clever_l2", float(scores.mean()), {"scores": scores.tolist()}
