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

from robustcompress.attacks.checks import (
    DEFAULT_TOL,
    Flag,
    check_undeclared_randomness,
    gradient_check,
    masking_checks,
)
from robustcompress.attacks.draws import draw_logits, mc_predict
from robustcompress.attacks.probe import declare_randomness
from robustcompress.attacks.robustness_report import AttackRecord, RobustnessReport, jsonable
from robustcompress.attacks.registry import get_attack, run_attack, validate_attack_params
from robustcompress.attacks.seeds import child_generator, draw_seed
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.validation import check_batch_and_dtype, check_logits, check_within_threat
from robustcompress.attacks.verdicts import judge, prediction, reached_goal, within_budget
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import model_properties, straight_through
from robustcompress.nn.ste import check_surrogate as _check_surrogate

#: Gradient draws per step for stochastic models (AutoAttack ``version='rand'``: ``eot_iter=20``).
DEFAULT_EOT = 20
#: Draws behind every verdict for stochastic models (SAP's ``mc_samples_output = 100``).
DEFAULT_MC = 100
#: Samples the masking checks run on (they run several attacks; a subset keeps them cheap).
DEFAULT_CHECK_SAMPLES = 256
#: Mixed into the master seed for the pre-cascade gradient check's own stream.
GRADIENT_CHECK_SEED = 0x6A7D
#: Square's budget when it is added because the gradients look masked and the battery had none.
FORCED_SQUARE_QUERIES = 1000

AttackEntry = Union[str, tuple, dict]


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
    _check_call(model, x, y, threat, attacks, bpda)
    y = y.long()
    model, undeclared = declare_randomness(model, x)
    run = _start_run(model, x, y, threat, generator, eot_samples=eot_samples, mc_samples=mc_samples,
                     bpda=bpda, batch_size=batch_size, max_rows=max_rows, progress=progress)
    start_total = time.perf_counter()
    clean_seed, clean_correct, num_classes = _clean_verdict(run)
    m = min(run.n, int(check_samples))
    grad_flag = _gradient_flag(run, m) if run.n else None
    battery = (default_battery(threat, num_classes, apgd_steps=apgd_steps, n_restarts=n_restarts,
                               square_queries=square_queries, surrogate=surrogate_model is not None)
               if attacks is None else _normalise_battery(attacks))
    forced = attacks is None and _force_gradient_free(battery, threat, grad_flag)
    state = _Cascade.start(clean_correct, x)
    records = [_cascade_step(run, state, i, entry, surrogate_model)
               for i, entry in enumerate(battery)]
    true_prob = _true_prob(run, state)
    flags = _evaluation_flags(run, undeclared, records, checks, m, check_steps, tol, grad_flag)
    run.timings["total"] = time.perf_counter() - start_total
    settings = {
        **_run_settings(run, run.seed, clean_seed, battery), "gradient_free_forced": forced,
        "undeclared_randomness": undeclared, "n_restarts": n_restarts, "apgd_steps": apgd_steps,
        "square_queries": square_queries, "batch_size": batch_size, "max_rows": max_rows,
        "checks": {"enabled": checks, "samples": m, "steps": check_steps, "tol": tol},
        "surrogate_model": surrogate_model is not None,
    }
    return state.report(run, records, flags, clean_correct, true_prob, settings)


def _start_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
               generator: Optional[torch.Generator], *, eot_samples: Optional[int],
               mc_samples: Optional[int], bpda: str, batch_size: Optional[int],
               max_rows: Optional[int], progress: bool) -> "_Run":
    """The shared state: draws and BPDA by what the model declares, the master seed drawn."""
    props = model_properties(model)
    seed = draw_seed(generator)
    return _Run(model, x, y, threat, props,
                eot=(DEFAULT_EOT if eot_samples is None else int(eot_samples)) if props.stochastic else 1,
                mc=(DEFAULT_MC if mc_samples is None else int(mc_samples)) if props.stochastic else 1,
                bpda=bpda if props.non_differentiable else None,
                master=_new_generator(seed, torch.device("cpu")), seed=seed, batch_size=batch_size,
                max_rows=max_rows, say=_printer(progress))


def _evaluation_flags(run: "_Run", undeclared: bool, records: list, checks: bool, m: int,
                      steps: int, tol: float, grad_flag: Optional[Flag]) -> list[Flag]:
    """Undeclared randomness and (``checks``) the masking checks; raised flags are printed."""
    flags: list[Flag] = [check_undeclared_randomness(undeclared)] if undeclared else []
    if checks and run.n:
        flags += _masking_flags(run, records, m, steps, tol, grad_flag)
    for f in flags:
        if f.raised:
            run.say(f.line())
    return flags


def _true_prob(run: "_Run", state: "_Cascade") -> torch.Tensor:
    """Worst case per sample: the (MC-averaged) probability of the true class at the kept point."""
    probs = mc_predict(run.model, state.x_adv, mc_samples=run.mc,
                       generator=child_generator(run.master, run.dev), batch_size=run.batch_size)
    return probs.gather(1, run.y[:, None]).squeeze(1) if run.n else probs.new_zeros(0)


def _masking_flags(run: "_Run", records: list, m: int, steps: int, tol: float,
                   grad_flag: Optional[Flag]) -> list[Flag]:
    """The gradient-masking checks on the first ``m`` inputs, with the cascade's comparison."""
    t0 = time.perf_counter()
    whitebox_acc, others = _cascade_comparison(records, run.clean_acc, run.n)
    flags = masking_checks(
        run.model, run.x[:m], run.y[:m], run.threat, generator=child_generator(run.master, run.dev),
        eot_samples=run.eot if run.props.stochastic else None, mc_samples=run.mc, bpda=run.bpda,
        steps=steps, whitebox_accuracy=whitebox_acc, blackbox_accuracies=others, tol=tol,
        batch_size=run.batch_size, gradient_flag=grad_flag)
    run.timings["checks"] = time.perf_counter() - t0
    return flags


def _run_settings(run: "_Run", seed: int, clean_seed: int, battery: list) -> dict:
    """The settings of an evaluation that its run determines (threat, draws, seeds, battery)."""
    t = run.threat
    return {
        "threat": t.describe(), "norm": t.norm, "eps": t.eps, "bounds": list(t.bounds),
        "targeted": t.targeted, "eot_samples": run.eot, "mc_samples": run.mc, "bpda": run.bpda,
        "seed": seed, "clean_seed": clean_seed,
        "battery": [{"label": lb, "attack": nm, "params": jsonable(
            {k: v for k, v in pr.items() if k != "surrogate"})} for lb, nm, pr in battery],
        "stochastic_modules": list(run.props.stochastic_modules),
        "non_differentiable_modules": list(run.props.non_differentiable_modules),
        "torch": torch.__version__,
    }


def _check_call(model, x, y, threat, attacks, bpda) -> None:
    """Every input check, before any forward pass."""
    if x.shape[0] != y.shape[0]:
        raise UserInputError(f"{x.shape[0]} inputs but {y.shape[0]} labels; pass one label per input")
    threat.check_inputs(x)
    threat.check_model(model)
    check_batch_and_dtype(model, x)
    _check_surrogate(bpda)
    for _, name, params in _normalise_battery(attacks or []):  # before any attack runs
        problems = validate_attack_params(name, params, strict=False)
        if problems:
            raise UserInputError("; ".join(problems))


@dataclass
class _Run:
    """What every stage of one evaluation shares."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    threat: ThreatModel
    props: Any
    eot: int
    mc: int
    bpda: Optional[str]
    master: torch.Generator
    seed: int
    batch_size: Optional[int]
    max_rows: Optional[int]
    say: Any
    timings: dict = field(default_factory=dict)
    clean_acc: float = math.nan

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def dev(self) -> torch.device:
        return self.x.device

    def bpda_scope(self, white: bool = True):
        return straight_through(self.model, self.bpda) if (self.bpda and white) else contextlib.nullcontext()


def _clean_verdict(run: _Run) -> tuple[int, torch.Tensor, int]:
    """(seed, clean_correct, number of classes): the clean inputs judged like every attack."""
    t0 = time.perf_counter()
    seed = draw_seed(run.master)
    logits = draw_logits(run.model, run.x, mc_samples=run.mc, generator=_new_generator(seed, run.dev),
                         batch_size=run.batch_size)
    check_logits(logits, run.y, draws=True)  # finite on every clean input, labels within its classes
    correct = ~reached_goal(prediction(logits), run.y, run.threat.targeted)
    run.timings["clean"] = time.perf_counter() - t0
    run.clean_acc = float(correct.double().mean()) if run.n else math.nan
    run.say(f"clean accuracy {run.clean_acc:.2%} on {run.n} inputs ({run.threat.describe()}; "
            f"EOT {run.eot}, MC {run.mc}" + (f", BPDA {run.bpda}" if run.bpda else "") + ")")
    return seed, correct, int(logits.shape[2])


def _gradient_flag(run: _Run, m: int) -> Flag:
    """The zero/vanishing-gradient check (margin and cross-entropy) on the first ``m`` inputs,
    before the cascade, so a masked model gets a gradient-free attack."""
    t0 = time.perf_counter()
    with run.bpda_scope():
        # its own stream (seeded from the master seed, not drawn from it): the cascade's seeds
        # stay what they were before this check existed
        flag = gradient_check(run.model, run.x[:m], run.y[:m], run.threat, eot_samples=run.eot,
                              generator=_new_generator(run.seed ^ GRADIENT_CHECK_SEED, run.dev))
    run.timings["gradient_check"] = time.perf_counter() - t0
    return flag


def _force_gradient_free(battery: list, threat: ThreatModel, grad_flag: Optional[Flag]) -> bool:
    """Append Square to a default battery that has none when gradients look masked (Linf)."""
    if grad_flag is None or not grad_flag.raised or threat.norm != "linf":
        return False
    if any(name == "square" for _, name, _ in battery):
        return False
    battery.append(("square", "square", {"n_queries": FORCED_SQUARE_QUERIES}))
    return True


@dataclass
class _Cascade:
    """Per-sample state of the cascade."""

    robust: torch.Tensor
    fooled_any: torch.Tensor
    broken_by: torch.Tensor
    x_adv: torch.Tensor

    @classmethod
    def start(cls, clean_correct: torch.Tensor, x: torch.Tensor) -> "_Cascade":
        return cls(clean_correct.clone(), ~clean_correct,
                   torch.where(clean_correct, -1, -2).to(device=x.device, dtype=torch.long),
                   x.detach().clone())

    def report(self, run: "_Run", records: list, flags: list, clean_correct: torch.Tensor,
               true_prob: torch.Tensor, settings: dict) -> RobustnessReport:
        mean = lambda t: float(t.double().mean()) if run.n else math.nan  # noqa: E731
        return RobustnessReport(
            n=run.n, clean_accuracy=run.clean_acc, robust_accuracy=mean(self.robust),
            fooled_any_rate=mean(self.fooled_any), attacks=records, flags=flags,
            per_sample={"clean_correct": clean_correct.cpu(), "robust": self.robust.cpu(),
                        "fooled_any": self.fooled_any.cpu(), "broken_by": self.broken_by.cpu(),
                        "true_prob": true_prob.cpu()},
            settings=settings, timings=run.timings, x_adv=self.x_adv)


def _cascade_step(run: _Run, state: _Cascade, i: int, entry: tuple, surrogate_model) -> AttackRecord:
    """Attack the points still robust with battery entry ``i``; a point counts as broken only if
    its adversarial lies in the threat model and an independent verdict (fresh draws) says so."""
    label, name, params = entry
    spec = get_attack(name)
    params = dict(params)
    if name == "transfer" and "surrogate" in spec.parameters and "surrogate" not in params:
        if surrogate_model is None:
            raise UserInputError("the transfer attack needs surrogate_model=...")
        params["surrogate"] = surrogate_model
    attack_seed, reeval_seed = draw_seed(run.master), draw_seed(run.master)
    idx = state.robust.nonzero().flatten()
    t0 = time.perf_counter()
    broken_count = fooled_count = disagree = 0
    params_rec = {k: v for k, v in params.items() if k != "surrogate"}
    if idx.numel():
        kw: dict[str, Any] = {}
        if "eot_samples" in spec.parameters and run.props.stochastic:
            kw["eot_samples"] = run.eot
        if "mc_samples" in spec.parameters:
            kw["mc_samples"] = run.mc
        if run.max_rows is not None and "max_rows" in spec.parameters:
            kw["max_rows"] = run.max_rows
        with run.bpda_scope(spec.kind in ("white-box", "minimal")):
            res = run_attack(name, run.model, run.x[idx], run.y[idx], run.threat,
                             generator=_new_generator(attack_seed, run.dev),
                             batch_size=run.batch_size, **kw, **params)
        # independent re-evaluation of every adversarial: fresh draws, exact forward
        success, any_draw, _ = judge(run.model, res.x_adv, run.y[idx], run.threat, run.mc,
                                     _new_generator(reeval_seed, run.dev), run.batch_size)
        if spec.kind == "minimal" and run.threat.eps > 0:  # its point may lie beyond eps (FAB, C&W)
            fits = within_budget(run.threat.norm_of(res.x_adv - run.x[idx]), run.threat.eps)
            success, any_draw = success & fits, any_draw & fits
        check_within_threat(res.x_adv[success], run.x[idx][success], run.threat, label)
        state.robust[idx[success]] = False
        state.broken_by[idx[success]] = i
        state.x_adv[idx] = res.x_adv.detach()
        state.fooled_any[idx] |= any_draw | res.fooled_any
        broken_count, disagree = int(success.sum()), int((res.success != success).sum())
        fooled_count = int((any_draw | res.fooled_any).sum())
        params_rec = res.params
    seconds = time.perf_counter() - t0
    run.timings[label] = seconds
    rec = AttackRecord(label, name, spec.kind, jsonable(params_rec), int(idx.numel()),
                       broken_count, float(state.robust.double().mean()) if run.n else math.nan,
                       fooled_count, disagree, seconds, attack_seed)
    run.say(f"{label:>10}: attacked {rec.attempted}, broke {rec.broken}, robust accuracy "
            f"{rec.robust_accuracy:.2%} ({seconds:.1f} s)")
    return rec


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
