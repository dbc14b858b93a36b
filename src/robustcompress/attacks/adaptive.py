"""Adaptive robustness evaluation: the right battery for what the model declares, as a cascade.

:func:`evaluate_robustness` reads :func:`robustcompress.nn.model_properties` and

* for a **stochastic** model (a module with ``stochastic=True``) averages every gradient over
  ``eot_samples`` draws (EOT, Athalye et al. 2018; default 20 as AutoAttack's ``version='rand'``),
  averages Square's scores over as many draws (AutoAttack issue #56), and judges every input
  with an MC-averaged prediction over ``mc_samples`` draws (default 100, the number SAP's own
  evaluation averages); it also reports "fooled in at least one of the draws";
* for a **non-differentiable** model (``non_differentiable=True``) runs the gradient attacks
  inside :func:`robustcompress.nn.straight_through` with the ``bpda`` surrogate (BPDA, identity
  by default), while the forward stays exact;
* runs the battery APGD-CE, APGD-DLR (Croce & Hein 2020; 100 steps), Square (5000 queries,
  Linf only) and, when ``surrogate_model`` is given, a transfer attack from it, as a cascade
  (AutoAttack's protocol): each attack only sees the points still robust;
* re-evaluates every adversarial independently (a fresh MC draw for stochastic models) and
  counts a point as broken only on that verdict, so a point "broken" by one lucky draw stays in
  the cascade for the next attack (AutoAttack PRs #104/#105);
* runs the gradient-masking checks of :mod:`robustcompress.attacks.checks` and stores the flags.

Deviations from AutoAttack's standard version: APGD-DLR (untargeted, as in ``version='rand'``)
replaces APGD-T and FAB-T, the transfer attack is added, and the default EOT/MC settings apply
to every attack (AutoAttack applies EOT only in its ``rand`` version and never to Square).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from robustcompress.attacks.base import (
    child_generator,
    draw_logits,
    draw_seed,
    judge,
    mc_predict,
    prediction,
    reached_goal,
)
from robustcompress.attacks.checks import DEFAULT_TOL, Flag, masking_checks
from robustcompress.attacks.registry import get_attack, run_attack, validate_attack_params
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.validation import check_batch_and_dtype, check_logits
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import model_properties, straight_through
from robustcompress.nn.ste import _check as _check_surrogate

#: Gradient draws per step for stochastic models (AutoAttack ``version='rand'``: ``eot_iter=20``).
DEFAULT_EOT = 20
#: Draws behind every verdict for stochastic models (SAP's ``mc_samples_output = 100``).
DEFAULT_MC = 100
#: Samples the masking checks run on (they run several attacks; a subset keeps them cheap).
DEFAULT_CHECK_SAMPLES = 256

AttackEntry = Union[str, tuple, dict]


@dataclass
class AttackRecord:
    """One attack of the cascade and what it achieved on the points still robust before it."""

    label: str
    attack: str
    kind: str
    params: dict
    attempted: int
    broken: int
    robust_accuracy: float
    fooled_any: int
    disagreements: int
    seconds: float
    seed: int

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in self.__dict__.items()}


@dataclass
class RobustnessReport:
    """Result of :func:`evaluate_robustness`.

    Attributes
    ----------
    n : number of inputs evaluated.
    clean_accuracy : accuracy on the clean inputs (MC-averaged prediction if stochastic).
    robust_accuracy : worst case over the whole battery, after independent re-evaluation.
    fooled_any_rate : share of inputs misclassified in at least one draw by some attack (equal
        to ``1 - robust_accuracy`` for deterministic models).
    attacks : one :class:`AttackRecord` per attack, in cascade order (``robust_accuracy`` there is
        the accuracy after that attack).
    flags : gradient-masking checks (:class:`robustcompress.attacks.checks.Flag`).
    per_sample : ``clean_correct``, ``robust``, ``fooled_any`` (bool ``[n]``), ``broken_by``
        (``[n]`` int: index into ``attacks``, ``-1`` still robust, ``-2`` misclassified clean) and
        ``true_prob`` (``[n]``: MC-averaged probability of the label at the kept point, one
        more independent draw; the worst case per sample).
    settings : EOT, MC, BPDA, seeds, battery, threat model and model properties.
    timings : seconds for the clean pass, each attack, the checks and the total.
    x_adv : the adversarial kept per sample (the breaking one, else the last tried); not in JSON.
    """

    n: int
    clean_accuracy: float
    robust_accuracy: float
    fooled_any_rate: float
    attacks: list[AttackRecord]
    flags: list[Flag]
    per_sample: dict[str, torch.Tensor]
    settings: dict
    timings: dict
    x_adv: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def raised_flags(self) -> list[Flag]:
        return [f for f in self.flags if f.raised]

    def to_dict(self) -> dict:
        """JSON-serialisable summary (per-sample tensors become lists; ``x_adv`` is left out)."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "fooled_any_rate": self.fooled_any_rate,
            "attacks": [a.to_dict() for a in self.attacks],
            "flags": [f.to_dict() for f in self.flags],
            "per_sample": {k: v.tolist() for k, v in self.per_sample.items()},
            "settings": _jsonable(self.settings),
            "timings": _jsonable(self.timings),
        }

    def table(self):
        """A :class:`rich.table.Table` of the cascade (one row per attack)."""
        from rich.table import Table

        t = Table(title=f"Robustness ({self.settings.get('threat', '')})", show_lines=False)
        for col in ("attack", "kind", "attacked", "broken", "robust acc", "fooled any", "time (s)"):
            t.add_column(col, justify="left" if col in ("attack", "kind") else "right")
        t.add_row("clean", "-", str(self.n), str(self.n - int(self.per_sample["clean_correct"].sum())),
                  f"{self.clean_accuracy:.2%}", "-", f"{self.timings.get('clean', 0.0):.1f}")
        for a in self.attacks:
            t.add_row(a.label, a.kind, str(a.attempted), str(a.broken), f"{a.robust_accuracy:.2%}",
                      str(a.fooled_any), f"{a.seconds:.1f}")
        t.add_row("worst", "", "", "", f"{self.robust_accuracy:.2%}",
                  f"{self.fooled_any_rate:.2%}", f"{self.timings.get('total', 0.0):.1f}")
        return t

    def render(self, console=None) -> None:
        """Print the table, the settings line and every flag (raised ones in red)."""
        from rich.console import Console

        console = console or Console()
        console.print(self.table())
        s = self.settings
        console.print(f"EOT samples {s['eot_samples']}, MC samples {s['mc_samples']}, "
                      f"BPDA {s['bpda']}, seed {s['seed']}")
        for f in self.flags:
            style = "bold red" if f.raised else "green"
            console.print(f.line(), style=style, markup=False, highlight=False)


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def default_battery(
    threat: ThreatModel,
    num_classes: int,
    *,
    apgd_steps: int = 100,
    n_restarts: int = 1,
    square_queries: int = 5000,
    surrogate: bool = False,
) -> list[tuple[str, str, dict]]:
    """``[(label, registered attack, params), ...]`` of the default cascade for this threat."""
    battery = [("apgd-ce", "apgd", {"loss": "ce", "steps": apgd_steps, "restarts": n_restarts})]
    if num_classes >= 3 and not threat.targeted:
        battery.append(("apgd-dlr", "apgd", {"loss": "dlr", "steps": apgd_steps,
                                             "restarts": n_restarts}))
    if threat.norm == "linf" and square_queries > 0:
        battery.append(("square", "square", {"n_queries": square_queries}))
    if surrogate:
        battery.append(("transfer", "transfer", {
            "attack": "apgd", "attack_params": {"loss": "ce", "steps": apgd_steps}}))
    return battery


def _normalise_battery(attacks: Sequence[AttackEntry]) -> list[tuple[str, str, dict]]:
    out = []
    for a in attacks:
        if isinstance(a, str):
            out.append((a, a, {}))
        elif isinstance(a, dict):
            d = dict(a)
            name = d.pop("attack")
            out.append((d.pop("label", name), name, d))
        elif isinstance(a, tuple) and len(a) == 3:
            out.append((str(a[0]), str(a[1]), dict(a[2])))
        else:
            raise UserInputError(
                f"cannot read attack entry {a!r}; give a name ('apgd'), a dict "
                "{'attack': 'apgd', 'loss': 'dlr'} or a tuple (label, name, params)"
            )
    return out


def _new_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    surrogate_model: Optional[nn.Module] = None,
    attacks: Optional[Sequence[AttackEntry]] = None,
    eot_samples: Optional[int] = None,
    mc_samples: Optional[int] = None,
    bpda: str = "identity",
    n_restarts: int = 1,
    apgd_steps: int = 100,
    square_queries: int = 5000,
    checks: bool = True,
    check_samples: int = DEFAULT_CHECK_SAMPLES,
    check_steps: int = 20,
    tol: float = DEFAULT_TOL,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
    max_rows: Optional[int] = None,
    progress: bool = True,
) -> RobustnessReport:
    """Evaluate ``model`` on ``(x, y)`` under ``threat`` with an adaptive attack cascade.

    Parameters
    ----------
    model : classifier on inputs in ``threat.bounds``; never modified (mode, ``.grad``, RNG).
    x, y : inputs and labels (targets if ``threat.targeted``).
    surrogate_model : an undefended model for the transfer attack (skipped when ``None``).
    attacks : the battery; ``None`` for :func:`default_battery`. Entries are registered names,
        ``{"attack": name, "label": ..., **params}`` dicts or ``(label, name, params)`` tuples.
    eot_samples : gradient (and Square score) draws per step for stochastic models
        (``None``: :data:`DEFAULT_EOT`); ignored for deterministic models.
    mc_samples : draws behind every verdict for stochastic models (``None``: :data:`DEFAULT_MC`).
    bpda : surrogate backward for non-differentiable models (``"identity"``, ``"clipped"``,
        ``"tanh"``, ``"tanh0.75"``; ``"exact"`` = the naive attacker who sees zero gradients).
    n_restarts, apgd_steps, square_queries : budgets of the default battery.
    checks : run the gradient-masking checks (on the first ``check_samples`` inputs, PGD with
        ``check_steps`` steps) and add the black-box-vs-white-box comparison of the cascade.
    tol : accuracy difference counted as "a lot" by the checks.
    generator : the master seed; every attack gets its own generator seeded from it (the seeds
        are recorded). ``None``: a seed is drawn from the global RNG and recorded.
    batch_size : split every attack and prediction into batches of this size.
    max_rows : most rows per forward when EOT draws are stacked (memory bound; ``None``: all
        ``eot_samples`` copies of the batch in one forward), for the attacks that accept it.
    progress : print one line per attack to stderr.
    """
    if x.shape[0] != y.shape[0]:
        raise UserInputError(f"{x.shape[0]} inputs but {y.shape[0]} labels; pass one label per input")
    threat.check_inputs(x)
    threat.check_model(model)
    check_batch_and_dtype(model, x)
    y = y.long()
    props = model_properties(model)
    eot = (DEFAULT_EOT if eot_samples is None else int(eot_samples)) if props.stochastic else 1
    mc = (DEFAULT_MC if mc_samples is None else int(mc_samples)) if props.stochastic else 1
    bpda_used = bpda if props.non_differentiable else None
    _check_surrogate(bpda)
    for _, name, params in _normalise_battery(attacks or []):  # before any attack runs
        problems = validate_attack_params(name, params, strict=False)
        if problems:
            raise UserInputError("; ".join(problems))
    seed = draw_seed(generator)
    master = _new_generator(seed, torch.device("cpu"))
    dev = x.device
    say = _printer(progress)
    start_total = time.perf_counter()

    # clean verdict
    t0 = time.perf_counter()
    clean_seed = draw_seed(master)
    logits = draw_logits(model, x, mc_samples=mc, generator=_new_generator(clean_seed, dev),
                         batch_size=batch_size)
    check_logits(logits, y, draws=True)  # finite on every clean input, labels within its classes
    clean_correct = ~reached_goal(prediction(logits), y, threat.targeted)  # judged like attacks
    timings: dict[str, float] = {"clean": time.perf_counter() - t0}
    n = int(x.shape[0])
    clean_acc = float(clean_correct.double().mean()) if n else math.nan
    say(f"clean accuracy {clean_acc:.2%} on {n} inputs ({threat.describe()}; EOT {eot}, MC {mc}"
        + (f", BPDA {bpda}" if bpda_used else "") + ")")

    num_classes = int(logits.shape[2])
    battery = (default_battery(threat, num_classes, apgd_steps=apgd_steps, n_restarts=n_restarts,
                               square_queries=square_queries, surrogate=surrogate_model is not None)
               if attacks is None else _normalise_battery(attacks))
    robust = clean_correct.clone()
    fooled_any = ~clean_correct
    broken_by = torch.where(clean_correct, -1, -2).to(device=dev, dtype=torch.long)
    x_adv = x.detach().clone()
    records: list[AttackRecord] = []
    for i, (label, name, params) in enumerate(battery):
        spec = get_attack(name)
        params = dict(params)
        if name == "transfer" and "surrogate" in spec.parameters and "surrogate" not in params:
            if surrogate_model is None:
                raise UserInputError("the transfer attack needs surrogate_model=...")
            params["surrogate"] = surrogate_model
        attack_seed, reeval_seed = draw_seed(master), draw_seed(master)
        idx = robust.nonzero().flatten()
        t0 = time.perf_counter()
        broken_count = fooled_count = disagree = 0
        if idx.numel():
            kw: dict[str, Any] = {}
            if "eot_samples" in spec.parameters and props.stochastic:
                kw["eot_samples"] = eot
            if "mc_samples" in spec.parameters:
                kw["mc_samples"] = mc
            if max_rows is not None and "max_rows" in spec.parameters:
                kw["max_rows"] = max_rows
            white = spec.kind in ("white-box", "minimal")
            scope = (straight_through(model, bpda) if (bpda_used and white)
                     else contextlib.nullcontext())
            with scope:
                res = run_attack(name, model, x[idx], y[idx], threat,
                                 generator=_new_generator(attack_seed, dev), batch_size=batch_size,
                                 **kw, **params)
            # independent re-evaluation of every adversarial: fresh draws, exact forward
            success, any_draw, _ = judge(model, res.x_adv, y[idx], threat, mc,
                                         _new_generator(reeval_seed, dev), batch_size)
            broken = success
            robust[idx[broken]] = False
            broken_by[idx[broken]] = i
            x_adv[idx] = res.x_adv.detach()
            fooled_any[idx] |= any_draw | res.fooled_any
            broken_count = int(broken.sum())
            fooled_count = int((any_draw | res.fooled_any).sum())
            disagree = int((res.success != success).sum())
            params_rec = res.params
        else:
            params_rec = {k: v for k, v in params.items() if k != "surrogate"}
        seconds = time.perf_counter() - t0
        timings[label] = seconds
        rec = AttackRecord(label, name, spec.kind, _jsonable(params_rec), int(idx.numel()),
                           broken_count, float(robust.double().mean()) if n else math.nan,
                           fooled_count, disagree, seconds, attack_seed)
        records.append(rec)
        say(f"{label:>10}: attacked {rec.attempted}, broke {rec.broken}, robust accuracy "
            f"{rec.robust_accuracy:.2%} ({seconds:.1f} s)")

    # worst case per sample: the (MC-averaged) probability of the true class at the kept point
    final_probs = mc_predict(model, x_adv, mc_samples=mc,
                             generator=child_generator(master, dev), batch_size=batch_size)
    true_prob = final_probs.gather(1, y[:, None]).squeeze(1) if n else final_probs.new_zeros(0)

    flags: list[Flag] = []
    if checks and n:
        t0 = time.perf_counter()
        m = min(n, int(check_samples))
        whitebox_acc, others = _cascade_comparison(records, clean_acc, n)
        flags = masking_checks(
            model, x[:m], y[:m], threat, generator=child_generator(master, dev),
            eot_samples=eot if props.stochastic else None, mc_samples=mc, bpda=bpda_used,
            steps=check_steps, whitebox_accuracy=whitebox_acc, blackbox_accuracies=others,
            tol=tol, batch_size=batch_size,
        )
        timings["checks"] = time.perf_counter() - t0
        for f in flags:
            if f.raised:
                say(f.line())
    timings["total"] = time.perf_counter() - start_total
    settings = {
        "threat": threat.describe(),
        "norm": threat.norm, "eps": threat.eps, "bounds": list(threat.bounds),
        "targeted": threat.targeted,
        "eot_samples": eot, "mc_samples": mc, "bpda": bpda_used, "seed": seed,
        "clean_seed": clean_seed,
        "battery": [{"label": lb, "attack": nm, "params": _jsonable(
            {k: v for k, v in pr.items() if k != "surrogate"})} for lb, nm, pr in battery],
        "n_restarts": n_restarts, "apgd_steps": apgd_steps, "square_queries": square_queries,
        "batch_size": batch_size, "max_rows": max_rows,
        "checks": {"enabled": checks, "samples": min(n, check_samples), "steps": check_steps,
                   "tol": tol},
        "stochastic_modules": list(props.stochastic_modules),
        "non_differentiable_modules": list(props.non_differentiable_modules),
        "surrogate_model": surrogate_model is not None,
        "torch": torch.__version__,
    }
    return RobustnessReport(
        n=n,
        clean_accuracy=clean_acc,
        robust_accuracy=float(robust.double().mean()) if n else math.nan,
        fooled_any_rate=float(fooled_any.double().mean()) if n else math.nan,
        attacks=records,
        flags=flags,
        per_sample={"clean_correct": clean_correct.cpu(), "robust": robust.cpu(),
                    "fooled_any": fooled_any.cpu(), "broken_by": broken_by.cpu(),
                    "true_prob": true_prob.cpu()},
        settings=settings,
        timings=timings,
        x_adv=x_adv,
    )


def _cascade_comparison(records: list[AttackRecord], clean_acc: float,
                        n: int) -> tuple[Optional[float], dict[str, float]]:
    """White-box accuracy of the cascade and, per black-box/transfer attack, the accuracy it
    would have left on its own after the white-box attacks (white-box minus what only it broke)."""
    white = [r for r in records if r.kind in ("white-box", "minimal")]
    other = [r for r in records if r.kind in ("black-box", "transfer")]
    if not white or not other:
        return None, {}
    white_acc = clean_acc - sum(r.broken for r in white) / n
    return white_acc, {r.label: white_acc - r.broken / n for r in other}


def _printer(progress: bool):
    if not progress:
        return lambda msg: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda msg: console.print(msg, markup=False, highlight=False)
