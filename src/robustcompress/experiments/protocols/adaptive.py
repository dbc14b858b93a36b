"""The adaptive robustness evaluation of a checkpoint (APGD-CE/DLR, Square, transfer; EOT for
stochastic and BPDA for non-differentiable models; gradient-masking checks), optionally grown
until the number converges, or AutoAttack's ``standard`` protocol on the same cascade
(``protocol="standard"``, :mod:`robustcompress.attacks.standard`). ``evaluate --adaptive`` and
``evaluate-adaptive`` both call this."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from robustcompress.errors import UserInputError

#: the evaluation protocols: our adaptive cascade, or AutoAttack's standard version on it
PROTOCOLS = ("adaptive", "standard")


def adaptive_evaluation(model, split, info, *, device, seed: int, norm: str, eps: Optional[str],
                        eps_scale: Optional[float] = None, surrogate=None,
                        converge: Optional[dict] = None, json_path: Optional[Path] = None,
                        protocol: str = "adaptive", **kw):
    """Evaluate ``model`` on ``split`` (a :class:`robustcompress.data.info.Split`) and return the
    report (written as JSON to ``json_path`` if given); ``converge`` = {"eot_start", "eot_cap",
    "tol"} grows EOT and APGD steps until the robust accuracy settles; ``kw`` goes to
    ``evaluate_robustness``; ``protocol="standard"``: AutoAttack's standard (randomized for
    stochastic models) battery instead of the adaptive one."""
    import torch

    from robustcompress.attacks import ThreatModel
    from robustcompress.attacks.adaptive import evaluate_robustness
    from robustcompress.attacks.convergence import evaluate_until_converged

    if eps is None:
        raise UserInputError("the adaptive evaluation needs a budget: pass --eps, e.g. --eps 8/255 "
                             "(images) or --eps 0.03")
    if protocol not in PROTOCOLS:
        raise UserInputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "standard" and (converge is not None or surrogate is not None):
        raise UserInputError("the standard protocol fixes its battery: drop --converge and "
                             "--surrogate, or use --protocol adaptive")
    threat = ThreatModel.from_spec(norm, eps, info, eps_scale=eps_scale)
    x, y = split.x.to(device), split.y.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    if protocol == "standard":
        from robustcompress.attacks.standard import evaluate_standard

        report = evaluate_standard(model, x, y, threat, generator=gen, **kw)
    elif converge is not None:
        kw.pop("eot_samples", None)
        report = evaluate_until_converged(model, x, y, threat, surrogate_model=surrogate,
                                          generator=gen, **converge, **kw)
    else:
        report = evaluate_robustness(model, x, y, threat, surrogate_model=surrogate, generator=gen, **kw)
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=1))
    return report


def evaluate_checkpoint(checkpoint: str, *, split: str = "test", limit: Optional[int] = 1000,
                        surrogate: Optional[str] = None, data_dir: Optional[str] = None,
                        device: str = "auto", **kw):
    """Load ``checkpoint`` and its dataset (shape-checked) and run :func:`adaptive_evaluation`
    on ``limit`` class-stratified points of ``split``."""
    from robustcompress.experiments.protocols.loading import load_checkpoint_data, load_surrogate

    if split not in ("test", "train"):
        raise UserInputError(f"--split must be test or train, got {split!r}")
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, device=device)
    sur = load_surrogate(surrogate, ld.info, ld.device) if surrogate else None
    part = getattr(ld.data, split).sample(limit or None)
    return adaptive_evaluation(ld.model, part, ld.info, device=ld.device, surrogate=sur, **kw)
