"""The cost model behind :func:`~robustcompress.experiments.plan.plan_experiment`: what one unit of
a run costs, in passes of the base model, from the config alone (nothing is trained or attacked).

A pass is one of the kinds :mod:`.calibration` times: a training step (``train``), a forward and
backward pass with respect to the input (``grad``), a forward pass (``forward``), and an attack's
own overhead per call (``call``) and per iteration (``step``), which dominate on small models.
Every figure that is not read off the config is an assumption, named here once:

=========================  ==================================================================
defense (``method``)       training it runs, in plain training steps
=========================  ==================================================================
adversarial_training       ``epochs`` x (``steps`` + 1) (PGD: steps gradient passes + the
                           update; FGSM / R+FGSM: 2)
anp_vs                     ``epochs`` x (``steps`` + 2) (PGD, then clean and adversarial loss)
defensive_quantization     ``epochs`` x 1 (x (``steps`` + 1) with ``adversarial``)
tensorization, xnor        (``pretrain_epochs`` +) ``finetune_epochs`` x 1 (x (adversarial_steps
                           + 1) with ``adversarial``); a Tucker/XNOR model costs about what the
                           dense one does
prune                      ``rounds`` x ``retrain_epochs`` x 1; one variant per round
quantize                   ``qat_epochs`` x 1
independent                the run's ``epochs`` (or its own) x 1
feedback_learning          ``rounds`` x ``epochs`` x 1, plus DeepFool on ``pool`` points per
                           round (the generated examples it adds to training are not counted)
the others                 nothing (sap, dropout, rna, rsa, rnw, rsw, swp, dwp, feature_squeezing)
=========================  ==================================================================

Evaluation (per point): an attack of ``k`` iterations costs ``k`` gradient passes x its EOT
draws (draws are stacked in one batch), plus the verdict's MC forward passes. Assumptions (the
constants below): the first attack of a cascade sees every point and :data:`SURVIVING` of the
points are left for the second and later attacks, unless the run's store already holds the
variant's clean and paper-protocol accuracies (:class:`Survival`); an iterative attack that
stops a point at its first success (deterministic models) keeps that share of the batch on
average; DeepFool runs :data:`DEEPFOOL_ITERATIONS`
iterations; C&W's abort-early spends :data:`CW_ABORT_EARLY` of its budget; a stochastic model's
pass costs :data:`STOCHASTIC_FORWARD` dense ones unless the plan could time it; the masking
checks cost :data:`CHECKS_OVERHEAD` times their passes; ``converge_eot`` runs
:data:`CONVERGE_ROUNDS` rounds. Measured against real runs in bench/RESULTS.md (2026-12-04).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Optional

#: Fraction of the points still robust after the first attack of a cascade (the later attacks
#: run on those only) when the store knows nothing of the variant, and the share of the batch an
#: early-stopping attack keeps on average. Off either way for a weak model: the FSDD SoundNet5
#: config (every variant 0-1% adaptive) was planned at 69 min and ran in 26.
SURVIVING = 0.5
#: Iterations of DeepFool's batch loop (it runs until its slowest point crosses the boundary,
#: about 10 on trained models), and the share of the points still in it on average.
DEEPFOOL_ITERATIONS = 10
DEEPFOOL_SHARE = 0.5
#: Attack calls' own overhead (input checks, probing the model for randomness, the verdict),
#: in units of the calibrated call overhead (one FGSM call on two inputs, less its passes).
CALLS_PER_ATTACK = 1.0
#: A unit's own bookkeeping (its generators, the store's commit to disk), in call overheads.
CALLS_PER_UNIT = 10.0
#: A Square query's own overhead (drawing the squares), in PGD iterations' (measured: 4x).
SQUARE_OVERHEAD = 4.0
#: Share of C&W's binary_search_steps x steps that abort-early leaves.
CW_ABORT_EARLY = 0.2
#: Cost of a stochastic variant's pass relative to the dense model's when it cannot be measured
#: (a defense that trains; the plan times the others: SAP measured 1.4x on LeNet-5, 2.3x on
#: ResNet-20).
STOCHASTIC_FORWARD = 1.3
#: The gradient-masking checks cost this much more than their passes count (measured on SAP
#: LeNet-5, MNIST, EOT 20: 271 s for 161 s counted).
CHECKS_OVERHEAD = 1.7
#: A backward pass costs about twice a forward: one gradient pass = 3 forwards.
FORWARDS_PER_GRAD = 3.0
#: Rounds of ``converge_eot`` counted (each doubles EOT draws and APGD steps).
CONVERGE_ROUNDS = 2
#: Stochastic methods (a variant built on one of them is stochastic too).
STOCHASTIC_METHODS = {"sap", "dropout", "rna", "rsa", "rnw", "rsw", "swp", "dwp"}


@dataclass
class Job:
    """``passes`` passes of kind ``rate`` (train | grad | forward | call | step) over ``points`` inputs in
    batches of ``batch``, each input stacked ``rows`` times, each pass ``cost`` times the base
    model's."""

    rate: str
    passes: float
    points: float
    batch: int
    rows: float = 1.0
    cost: float = 1.0  # seconds relative to the dense base model's pass (stochastic layers)

    @property
    def steps(self) -> float:
        """Batched passes (the table's work column)."""
        return self.passes * math.ceil(self.points * self.rows / max(1, self.batch)) if self.points else 0.0


# ----------------------------------------------------------------------------- defenses
def training_jobs(epochs: float, factor: float, train: dict, n_train: int, n_test: int) -> list[Job]:
    """``epochs`` epochs of ``fit`` (``train``: its settings), each training step ``factor``
    plain steps, and the clean test pass ``fit`` makes after every epoch."""
    if epochs <= 0:
        return []
    batch = int(train.get("batch_size", 128))
    steps = math.ceil(n_train / batch)
    if train.get("max_batches_per_epoch"):
        steps = min(steps, int(train["max_batches_per_epoch"]))
    return [Job("train", epochs * factor, steps * batch, batch),
            Job("forward", epochs, n_test, int(train.get("eval_batch_size", 512)))]


def defense_training(method: str, p: Any, train: dict, n_train: int, n_test: int) -> list[Job]:
    """The training of one defense step (``p``: its validated params; ``train``: the run's
    training settings with the defense's overrides) as :class:`Job` s."""
    epochs, factor = _defense_epochs(method, p, train)
    if method == "feedback_learning":  # the run's recipe, after DeepFool on the pool
        return (training_jobs(epochs, factor, train, n_train, n_test)
                + [Job("grad", deepfool_passes(10), p.rounds * min(p.pool, n_train), 256)])
    return training_jobs(epochs, factor, train, n_train, n_test)


def _defense_epochs(method: str, p: Any, train: dict) -> tuple[float, float]:
    """(epochs, training steps per batch) of the table in the module docstring."""
    run_epochs = float(train.get("epochs", 2))
    if method == "adversarial_training":
        return p.epochs, (p.steps + 1 if p.attack == "pgd" else 2)
    if method == "anp_vs":
        return p.epochs, p.steps + 2
    if method == "defensive_quantization":
        return p.epochs, (p.steps + 1 if p.adversarial else 1)
    if method == "tensorization":
        return p.pretrain_epochs + p.finetune_epochs, (p.adversarial_steps + 1 if p.adversarial else 1)
    if method == "xnor":
        return p.finetune_epochs, 1
    if method == "prune":
        return p.rounds * p.retrain_epochs, 1
    if method == "quantize":
        return p.qat_epochs, 1
    if method == "independent":
        return (p.epochs or run_epochs), 1
    if method == "feedback_learning":
        return p.rounds * p.epochs, 1
    return 0, 1


def defense_outputs(method: str, p: Any) -> list[str]:
    """Suffixes of the variants one defense step returns (progressive pruning: one per round)."""
    return [f"r{k}" for k in range(1, p.rounds + 1)] if method == "prune" else [""]


def is_stochastic(method: str, p: Any) -> bool:
    """Whether the method's variants draw noise at every forward."""
    if method == "tensorization":
        return p.theta < 1.0
    return method in STOCHASTIC_METHODS


# ----------------------------------------------------------------------------- attacks
def deepfool_passes(candidates: int, iterations: int = DEEPFOOL_ITERATIONS) -> float:
    """One forward and ``candidates`` backward passes per iteration, in gradient passes (a
    backward through a retained graph costs about a whole gradient pass on small models)."""
    return iterations * (1 + candidates)


@dataclass
class AttackCost:
    """Per point and EOT draw: ``grad`` gradient and ``forward`` forward passes of the batch
    loop, with ``share`` of the points still in the batch on average (early stopping)."""

    grad: float
    forward: float = 0.0
    share: float = 1.0
    overhead: float = 1.0  # an iteration's own overhead, in PGD iterations' (see SQUARE_OVERHEAD)


def attack_cost(name: str, params: dict, num_classes: int, stochastic: bool) -> AttackCost:
    """What one registered attack with ``params`` costs (its defaults fill the rest); see the
    module docstring for the assumptions."""
    from robustcompress.attacks import get_attack

    try:
        defaults = {k: v for k, v in get_attack(name).parameters.items() if v is not inspect.Parameter.empty}
    except Exception:  # an unknown name fails in the run itself, with its own message
        defaults = {}
    p = {**defaults, **params}
    early = 1.0 if stochastic else SURVIVING  # points leave the batch at their first success
    search = float(p.get("boundary_search") or 0)
    targets = min(int(p.get("n_target_classes") or 1), num_classes - 1)
    if name in ("fgsm", "rfgsm"):
        return AttackCost(1.0)
    if name in ("pgd", "bim", "mim", "apgd", "apgd-t"):
        return AttackCost((p.get("steps") or 10) * (p.get("restarts") or 1) * targets, 0.0, early)
    if name == "square":
        return AttackCost(0.0, float(p["n_queries"]), early, SQUARE_OVERHEAD)
    if name == "cw":
        return AttackCost(p["binary_search_steps"] * p["steps"] * CW_ABORT_EARLY, search)
    if name == "deepfool":
        k = min(p.get("candidates") or num_classes, num_classes)
        return AttackCost(deepfool_passes(k, min(p["max_iter"], DEEPFOOL_ITERATIONS)), search,
                          DEEPFOOL_SHARE)
    if name == "fmn":
        return AttackCost(float(p["steps"]), search)
    if name in ("fab", "fab-t"):
        per_step = targets if name == "fab-t" else (1 + 2 * num_classes) / FORWARDS_PER_GRAD
        return AttackCost(p["steps"] * p["restarts"] * per_step, search)
    if name == "transfer":
        inner = attack_cost(p.get("attack") or "pgd", dict(p.get("attack_params") or {}), num_classes, False)
        return AttackCost(inner.grad, inner.forward + 1.0, inner.share)
    return AttackCost(0.0, 1.0)  # noise attacks: one forward per draw


def attack_jobs(cost: AttackCost, points: float, batch: int, draws: float, mc: float,
                share: float = None) -> list[Job]:
    """An attack's loop over ``points`` (each pass at the cost of the whole batch's call, its
    inputs ``share`` of the points), its verdict (``mc`` forwards) and its call overhead."""
    share = cost.share if share is None else share
    batches = math.ceil(points / max(1, batch)) if points else 0
    return [Job("grad", cost.grad, points, batch, draws * share),
            Job("forward", cost.forward, points, batch, draws * share),
            Job("forward", 1, points, batch, mc), Job("call", CALLS_PER_ATTACK * batches, 1, 1),
            Job("step", (cost.grad + cost.forward) * cost.overhead * batches, 1, 1)]


@dataclass
class Survival:
    """Shares of the evaluation points a cascade's attacks see: the first attack the points
    classified correctly (``clean``), the later ones those still robust after it, at most the
    lowest paper-protocol robust accuracy at that eps (``robust``: no attack of the paper
    protocol is stronger than the cascade's first). Unknown (None): every point, and
    :data:`SURVIVING` of them (``assumed``)."""

    clean: Optional[float] = None
    robust: Optional[float] = None

    @property
    def assumed(self) -> bool:
        return self.robust is None

    @property
    def first(self) -> float:
        return 1.0 if self.clean is None else self.clean

    @property
    def later(self) -> float:
        return min(SURVIVING if self.robust is None else self.robust, self.first)


def battery_jobs(battery: list, n: float, batch: int, num_classes: int, stochastic: bool,
                 eot: int, mc: int, survival: Optional[Survival] = None) -> list[Job]:
    """A cascade (``[(label, attack, params)]``): the first attack on the ``survival.first`` share
    of the ``n`` points, the others on the ``survival.later`` share, which resist: they run
    every step (see :class:`Survival`)."""
    s = survival or Survival()
    jobs = []
    for i, (_label, name, params) in enumerate(battery):
        cost = attack_cost(name, params, num_classes, stochastic)
        draws = eot if stochastic and name != "transfer" else 1
        share = s.first if i == 0 else s.later  # of each batch: a smaller batch of points
        jobs += attack_jobs(cost, n * share, max(1, round(batch * share)), draws, mc,
                            share=None if i == 0 else 1.0)
    return jobs


def checks_jobs(m: float, steps: int, batch: int, stochastic: bool, eot: int, mc: int) -> list[Job]:
    """The gradient-masking checks on ``m`` points: FGSM, PGD-k, PGD-4k, the eps/2 and 2 eps PGD-k
    pair, PGD-k at a large eps (and PGD-k with 4x EOT for stochastic models), each judged."""
    share = 1.0 if stochastic else SURVIVING  # PGD stops a point of a deterministic model early
    jobs = [Job("grad", 2, m, batch, eot),  # the zero-gradient check (CE and margin)
            Job("grad", (1 + 7 * steps) * CHECKS_OVERHEAD, m, batch, eot * share), Job("forward", 6, m, batch, mc),
            Job("call", CALLS_PER_ATTACK * 7, 1, 1), Job("step", 2 + 7 * steps, 1, 1)]
    if stochastic:
        jobs.append(Job("grad", steps * CHECKS_OVERHEAD, m, batch, 4 * eot))
    return jobs


def converge_scale(eot: int, cap: int) -> float:
    """How much more ``converge_eot`` costs than one evaluation: :data:`CONVERGE_ROUNDS` rounds,
    each with twice the draws and twice the steps of the one before (until ``cap``)."""
    rounds = 1 + min(CONVERGE_ROUNDS - 1, int(math.log2(max(1, cap // max(1, eot)))))
    return sum(4 ** r for r in range(rounds))


def scale_jobs(jobs: list[Job], factor: float, kinds=("grad", "forward")) -> list[Job]:
    for j in jobs:
        if j.rate in kinds:
            j.passes *= factor
    return jobs



@dataclass
class EvalContext:
    """What an evaluation unit's cost depends on besides its own spec; :meth:`learn` takes the
    stored rows of the variant's finished units (clean and paper-protocol accuracies)."""

    ev: Any  # the config's evaluation section
    metrics: Any  # the config's metrics section
    info: Any  # DatasetInfo
    n: int  # evaluation points
    stochastic: bool
    threats: dict  # (norm, eps label) -> ThreatModel
    clean: Optional[float] = None  # stored clean accuracy of the variant
    robust: dict = field(default_factory=dict)  # (norm, eps label) -> lowest stored paper accuracy

    def learn(self, rows: list[tuple]) -> None:
        """Take ``(protocol, norm, eps_label, clean_acc, robust_acc)`` rows of a finished unit."""
        for protocol, norm, eps_label, clean, robust in rows:
            if protocol == "clean" and clean is not None:
                self.clean = clean
            elif protocol == "paper" and robust is not None:
                key = (norm, eps_label)
                self.robust[key] = min(robust, self.robust.get(key, robust))

    def survival(self, norm: str, eps_label: str) -> Survival:
        return Survival(self.clean, self.robust.get((norm, eps_label)))


def unit_jobs(kind: str, spec: list, c: EvalContext) -> list[Job]:
    """The passes of one evaluation unit (``kind`` and ``spec`` as the runner names it), and
    its bookkeeping."""
    return _unit_passes(kind, spec, c) + [Job("call", CALLS_PER_UNIT, 1, 1)]


def _unit_passes(kind: str, spec: list, c: EvalContext) -> list[Job]:
    ev, n, b, C = c.ev, c.n, c.ev.batch_size, c.info.num_classes
    eot = ev.eot_samples if c.stochastic else 1
    mc = ev.mc_samples if c.stochastic else 1
    if kind == "clean":
        return [Job("forward", 1, n, b, mc + 1)]
    if kind == "metrics":
        return metrics_jobs(c, mc)
    if kind == "paper":
        item, stoch = dict(spec[0]), c.stochastic
        draws, verdict = (item.get("eot") or 1) if stoch else 1, (item.get("mc") or 1) if stoch else 1
        params = {k: v for k, v in item.items() if k not in ("attack", "eot", "mc", "norm")}
        return attack_jobs(attack_cost(item["attack"], params, C, stoch), n, b, draws, verdict)
    if kind in ("adaptive", "standard"):
        return cascade_jobs(kind, spec, c, eot, mc)
    if kind == "security":
        params = {"eot_samples": eot} if spec[1] == "fmn" else {}
        return attack_jobs(attack_cost(spec[1], params, C, c.stochastic), n, b, eot, mc + 1)
    if kind == "minimal":
        return attack_jobs(attack_cost(spec[0], {}, C, c.stochastic), n, b, 1, 2)
    return []


def cascade_jobs(kind: str, spec: list, c: EvalContext, eot: int, mc: int) -> list[Job]:
    """An adaptive (or standard-protocol) unit: per batch the clean verdict, the cascade, the
    worst-case verdict; the gradient-masking checks once per unit (adaptive only)."""
    from robustcompress.attacks.adaptive import default_battery
    from robustcompress.attacks.standard import standard_battery

    ev, n, b, C = c.ev, c.n, c.ev.batch_size, c.info.num_classes
    threat = c.threats[(spec[0], spec[1])]
    if kind == "standard":
        eot = 20 if c.stochastic else 1  # the randomized version's own EOT
        n = min(n, ev.standard_samples or n)
        battery = standard_battery(threat, C, c.stochastic)
    else:
        battery = default_battery(threat, C, apgd_steps=ev.apgd_steps, square_queries=ev.square_queries,
                                  surrogate=bool(spec[2]))
    calls = Job("call", 2 * CALLS_PER_ATTACK * math.ceil(n / max(1, b)), 1, 1)  # probes, verdicts
    jobs = [Job("forward", 2, n, b, mc), calls] + battery_jobs(
        battery, n, b, C, c.stochastic, eot, mc, c.survival(spec[0], spec[1]))
    if kind == "adaptive" and ev.checks:
        jobs += checks_jobs(min(ev.check_samples, b, n), ev.check_steps, b, c.stochastic, eot, mc)
    if kind == "adaptive" and ev.converge_eot and c.stochastic:
        scale_jobs(jobs, converge_scale(ev.eot_samples, ev.eot_cap))
    return jobs


def metrics_jobs(c: EvalContext, mc: int) -> list[Job]:
    """Per-variant metrics: latency (13 forwards of one input), calibration (MC forwards), and
    when asked the vulnerability (PGD-10) and CLEVER (5 points x 50 x 64 samples, all classes)."""
    m, n, C = c.metrics, c.n, c.info.num_classes
    jobs = [Job("forward", 13, 1, 1), Job("call", 2 * CALLS_PER_UNIT, 1, 1)] if m.compression else []
    if m.calibration:
        jobs.append(Job("forward", 1, n, 256, mc))
    if m.vulnerability and c.ev.threats:
        jobs += [Job("grad", 10, n, n), Job("forward", 2, n, n)]
    if m.clever:
        jobs.append(Job("grad", (1 + 2 * C) / FORWARDS_PER_GRAD, 5 * 50 * 64, 64))
    return jobs
