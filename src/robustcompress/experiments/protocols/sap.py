"""Dhillon et al. (ICLR 2018), "Stochastic activation pruning for robust adversarial defense":
SAP or one of its stochastic baselines applied post hoc to a checkpoint, clean MC accuracy and
ECE, and the paper's FGSM sweep (gradient = mean of EOT draws, prediction = mean of MC draws,
lambda on the 0-255 scale)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from robustcompress.errors import UserInputError, describe_validation

BASELINES = ("sap", "dropout", "rna", "rsa", "rnw", "rsw", "swp", "dwp")


@dataclass
class SapResult:
    """Clean rows ``(label, accuracy, ECE)`` for base and defended, the FGSM sweep rows
    ``(lambda, base accuracy, defended accuracy)``, the validated parameters, the checkpoint."""

    baseline: str
    params: dict
    n_points: int
    clean: list = field(default_factory=list)
    sweep: list = field(default_factory=list)
    checkpoint: Optional[Path] = None


def parse_lambdas(text: Optional[str]) -> list[float]:
    """``"0,1,2,4"`` -> ``[0.0, 1.0, 2.0, 4.0]`` (the sweep's lambdas, 0-255 scale)."""
    try:
        return [float(v) for v in (text or "").split(",") if v.strip()]
    except ValueError:
        raise UserInputError(f"--fgsm must be comma-separated numbers, e.g. 0,1,2,4,8,16; "
                             f"got {text!r}") from None


def defense_params(baseline: str, params: dict[str, Any]):
    """The validated ``Params`` of ``baseline`` (its names: `robustcompress defenses`)."""
    from robustcompress.cli_options import check_params
    from robustcompress.defenses import get_defense

    if baseline not in BASELINES:
        raise UserInputError(f"--baseline {baseline!r} is unknown; choose one of {', '.join(BASELINES)}")
    spec = get_defense(baseline)
    unknown = sorted(set(params) - set(spec.Params.model_fields))
    check_params("defense", baseline, [f"no parameter(s) {', '.join(unknown)}; it accepts: "
                                       f"{', '.join(spec.Params.model_fields)}"] if unknown else [],
                 "defenses")
    try:
        return spec.Params(**params)
    except Exception as e:  # pydantic validation
        check_params("defense", baseline, [describe_validation(e)], "defenses")


def main_parameter(baseline: str) -> str:
    """The one numeric parameter of a stochastic baseline (dropout rate, s, frac or keep)."""
    from robustcompress.defenses import get_defense

    if baseline not in BASELINES:
        raise UserInputError(f"--baseline {baseline!r} is unknown; choose one of {', '.join(BASELINES)}")
    names = [k for k in get_defense(baseline).Params.model_fields if k != "layers"]
    if len(names) != 1:
        raise UserInputError(f"{baseline} has parameters {', '.join(names)}; set them with --param")
    return names[0]


def _mc_accuracy(model, x, y, mc: int, gen) -> float:
    from robustcompress.attacks import mc_predict

    return float((mc_predict(model, x, mc_samples=mc, generator=gen).argmax(1) == y).float().mean())


def fgsm_sweep(models: dict, x, y, info, lambdas: list[float], *, eot: int, mc: int, seed: int,
               device) -> list[tuple]:
    """The paper's protocol: per lambda (0-255 scale) one FGSM step on each model, with the
    gradient averaged over ``eot`` draws and the verdict over ``mc`` draws."""
    import torch

    from robustcompress.attacks import ThreatModel, run_attack
    from robustcompress.nn import use_generator

    rows = []
    for lam in lambdas:
        accs = []
        for m in models.values():
            gen = torch.Generator(device=device).manual_seed(seed + int(lam))
            if lam == 0:
                accs.append(_mc_accuracy(m, x, y, mc, gen))
                continue
            threat = ThreatModel.from_spec("linf", lam, info, eps_scale=255)
            with use_generator(m, gen):
                res = run_attack("fgsm", m, x, y, threat, generator=gen, eot_samples=eot,
                                 mc_samples=mc)
            accs.append(res.robust_accuracy)
        rows.append((lam, *accs))
    return rows


def sap_evaluation(checkpoint: str, *, baseline: str = "sap", params: dict[str, Any],
                   lambdas: list[float], eot: int = 100, mc: int = 100, limit: int = 500,
                   out: Optional[str] = None, data_dir: Optional[str] = None,
                   device: str = "auto", seed: int = 0) -> SapResult:
    """Apply ``baseline`` to ``checkpoint``; clean MC accuracy/ECE of base and defended, the FGSM
    sweep at ``lambdas``; the defended model is saved to the run folder ``out`` (if given)."""
    import torch

    from robustcompress.attacks import mc_predict
    from robustcompress.defenses import get_defense
    from robustcompress.experiments.protocols.loading import eval_points, load_checkpoint_data
    from robustcompress.metrics.calibration import reliability
    from robustcompress.training import save_checkpoint

    p = defense_params(baseline, params)  # before any loading
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, test_limit=limit, device=device)
    defended = get_defense(baseline).apply(ld.model, p, None)[""].to(ld.device).eval()
    x, y = eval_points(ld.data, limit, ld.device)
    res = SapResult(baseline, p.model_dump(), len(y))
    for label, m in (("base", ld.model), (baseline, defended)):
        probs = mc_predict(m, x, mc_samples=mc, generator=torch.Generator(device=ld.device).manual_seed(seed))
        res.clean.append((label, float((probs.argmax(1) == y).float().mean()), reliability(probs, y).ece))
    res.sweep = fgsm_sweep({"base": ld.model, baseline: defended}, x, y, ld.data.info, lambdas,
                           eot=eot, mc=mc, seed=seed, device=ld.device)
    if out:
        res.checkpoint = save_checkpoint(
            defended, Path(out) / "model",
            {"metrics": {"clean_acc": res.clean[1][1], "ece": res.clean[1][2]},
             "base_checkpoint": str(checkpoint)})
    return res
