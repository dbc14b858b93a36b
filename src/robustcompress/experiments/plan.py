"""Know the cost first: the units a config will run and how long each stage should take here.

:func:`plan_experiment` lists the runner's units (the trained base, every defense step, every
evaluation unit of every variant) by the same keys the runner uses, marks those already finished
in the run folder as done (they cost nothing: the runner skips them), counts each stage's work
from the config (:mod:`.plan_costs`) and turns it into seconds with a short calibration of the
base model on the device (:mod:`.calibration`). Nothing is trained, attacked or written.

What the estimate leaves out: loading the data, writing checkpoints and the report, the time a
defense spends outside training (e.g. pruning masks, Tucker decompositions), ``amp`` /
``channels_last`` / ``compile`` speed-ups, and how robust each variant turns out: a cascade
attacks fewer points of a weak model. Before a variant's clean and paper-protocol units have run
the plan assumes half the points survive the first attack (``SURVIVING`` in
:mod:`.plan_costs`) and says so in :attr:`Plan.notes`; afterwards (a re-plan of a run folder)
it uses their stored accuracies (:class:`~.plan_costs.Survival`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from robustcompress.experiments.calibration import Calibration, Rate, affordable_batch, calibrate, grad_seconds
from robustcompress.experiments.config import ExperimentConfig, expand_grid, stable_hash, variant_label
from robustcompress.experiments.plan_costs import (
    STOCHASTIC_FORWARD,
    SURVIVING,
    EvalContext,
    Job,
    defense_outputs,
    defense_training,
    is_stochastic,
    training_jobs,
    unit_jobs,
)

#: Above this many estimated seconds on a CPU, ``robustcompress run`` asks before starting.
CONFIRM_ABOVE_S = 2 * 3600.0
#: At most this long is spent timing defended variants (see :func:`_variant_costs`).
MEASURE_BUDGET_S = 10.0


@dataclass
class Stage:
    """One row of the plan: ``units`` units (``done`` of them already finished), their ``work``
    in batched passes (training steps or attack passes, see :class:`~.plan_costs.Job`) and the
    estimated ``seconds`` of the units still to run (``None`` without a calibration)."""

    name: str
    units: int = 0
    done: int = 0
    work: float = 0.0
    seconds: Optional[float] = None
    jobs: list = field(default_factory=list, repr=False)


@dataclass
class Plan:
    """What :func:`plan_experiment` returns: the stages in run order and the calibration."""

    config: str
    output_dir: Path
    stages: list[Stage]
    calibration: Optional[Calibration] = None
    unit_keys: list[str] = field(default_factory=list)  # evaluation units, in run order
    seconds_planning: float = 0.0
    #: cascade units (adaptive, standard) to run whose survivors are assumed / read from the store
    cascades: dict[str, int] = field(default_factory=lambda: {"assumed": 0, "stored": 0})
    _variants: list = field(default_factory=list, repr=False)

    @property
    def notes(self) -> list[str]:
        """What the estimate assumes about the attacks' work, one line each (printed under the
        plan's table)."""
        lines = []
        if self.cascades["assumed"]:
            lines.append(
                f"eval adaptive/standard: {self.cascades['assumed']} unit(s) assume {SURVIVING:.0%} "
                "of the points survive the first attack of the cascade (the later attacks run on "
                "those only) and, where no clean accuracy is stored, that every point starts "
                "correct: a weak variant takes less (the FSDD SoundNet5 config was planned at 69 min "
                "and ran in 26), a robust one more. Re-plan the run folder once its clean and "
                "paper units are done to use their accuracies.")
        if self.cascades["stored"]:
            lines.append(f"eval adaptive/standard: {self.cascades['stored']} unit(s) take the points "
                         "each attack sees from the variant's stored clean and lowest paper-protocol "
                         "accuracy at that eps.")
        return lines

    @property
    def total_seconds(self) -> Optional[float]:
        if self.calibration is None:
            return None
        return sum(s.seconds or 0.0 for s in self.stages)

    @property
    def units(self) -> int:
        return sum(s.units for s in self.stages)

    @property
    def done(self) -> int:
        return sum(s.done for s in self.stages)

    @property
    def on_cpu(self) -> bool:
        return self.calibration is not None and self.calibration.device.startswith("cpu")

    def needs_confirmation(self, threshold_s: Optional[float] = None) -> bool:
        """Whether starting this run on a CPU should be confirmed: its estimate is above
        ``threshold_s`` (default :data:`CONFIRM_ABOVE_S`)."""
        limit = CONFIRM_ABOVE_S if threshold_s is None else threshold_s
        return self.on_cpu and (self.total_seconds or 0.0) > limit

    def summary(self) -> str:
        """``"about 6 h on cpu (2 threads)"`` (or the unit count without a calibration)."""
        left = self.units - self.done
        if self.calibration is None:
            return f"{left} of {self.units} units to run (no time estimate: calibration skipped)"
        return (f"about {format_duration(self.total_seconds)} on {self.calibration.device_label()} "
                f"({left} of {self.units} units to run)")


def format_duration(seconds: Optional[float]) -> str:
    """``"40 s"``, ``"12 min"``, ``"6.5 h"``, ``"9 days"``."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        hours = seconds / 3600
        return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
    return f"{seconds / 86400:.0f} days" if seconds >= 10 * 86400 else f"{seconds / 86400:.1f} days"


def plan_experiment(cfg: ExperimentConfig, device: Optional[str] = None, calibrate: bool = True,
                    output_dir: Optional[str] = None) -> Plan:
    """The units ``cfg`` will run and, with ``calibrate``, each stage's estimated time on
    ``device`` (default: the config's); units finished in the run folder are marked done.

    Reads the dataset (for its shape and sizes) and times a few steps of the base model; trains,
    attacks and writes nothing. Raises what the run would raise for a missing dataset or model.
    """
    import torch

    from robustcompress.experiments.runner import Runner

    t0 = time.perf_counter()
    updates = {k: v for k, v in (("device", device), ("output_dir", output_dir)) if v is not None}
    cfg = cfg.model_copy(update=updates) if updates else cfg
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:  # as run_experiment does, so the timing matches the run's
        torch.set_num_threads(cfg.threads)
    try:
        runner = Runner(cfg, progress=False)
        runner.dataset = _load_dataset(cfg)
        plan = _enumerate(runner)
        if calibrate:
            plan.calibration, model = _calibrate(runner)
            _variant_costs(runner, plan._variants, model, plan.calibration)
            for stage in plan.stages:
                stage.seconds = _seconds(stage.jobs, plan.calibration)
    finally:
        torch.set_num_threads(previous_threads)
    plan.seconds_planning = time.perf_counter() - t0
    return plan


def _load_dataset(cfg: ExperimentConfig):
    from robustcompress.data import load_dataset

    ds = cfg.dataset
    return load_dataset(ds.name, ds.path or ds.data_dir, train_limit=ds.train_limit,
                        test_limit=ds.test_limit, **ds.loader_options())


def _calibrate(runner) -> Calibration:
    """Time the config's base model (as it is before training) on the run's device."""
    from robustcompress.experiments.config_sources import build_base
    from robustcompress.training import load_checkpoint

    cfg, info = runner.cfg, runner.dataset.info
    if cfg.model.checkpoint:
        model = load_checkpoint(cfg.model.checkpoint, device=runner.device)
    else:
        model = build_base(cfg.model, info)
    train = {"batch_size": 128, "optimizer": "adam", **cfg.training}
    cal = calibrate(model, info, runner.device, train_batch=int(train["batch_size"]),
                    eval_batch=cfg.evaluation.batch_size, optimizer=train["optimizer"])
    return cal, model


def _variant_costs(runner, variants: list[_Planned], model, cal: Calibration) -> None:
    """Each variant's pass cost relative to the base model's, set on its evaluation jobs: timed
    on the defended base model when its defense trains nothing (SAP, noise layers, quantization:
    built in a moment; at most :data:`MEASURE_BUDGET_S` of timing), else its parent's
    (``STOCHASTIC_FORWARD`` for a stochastic variant with nothing timed)."""
    measured: dict[tuple, Optional[float]] = {}
    deadline = time.perf_counter() + MEASURE_BUDGET_S
    n = affordable_batch(cal.grad, runner.cfg.evaluation.batch_size)
    reference: list[float] = []  # the base model's pass, timed once, when first needed
    for v in variants:  # parents before the variants built on them
        cost = v.parent.cost if v.parent is not None else 1.0
        if v.step is not None and not v.step[2]:
            key = (v.step[0], json.dumps(v.step[1], sort_keys=True, default=str))
            if key not in measured and time.perf_counter() < deadline:
                measured[key] = _defense_cost(runner, model, v.step[0], v.step[1], n, reference)
            cost = measured.get(key) or cost
        elif v.stochastic and cost == 1.0:
            cost = STOCHASTIC_FORWARD
        v.cost = cost
        for j in v.jobs:
            j.cost = cost


def _defense_cost(runner, model, method: str, params: dict, n: int, reference: list) -> Optional[float]:
    """How much a pass of ``model`` defended by ``method`` costs relative to ``model``'s (None
    when the defense cannot be built here: the run reports that itself)."""
    import copy

    from robustcompress.defenses import DefenseContext, get_defense

    spec = get_defense(method)
    ctx = DefenseContext(dataset=runner.dataset, device=runner.device, seed=runner.cfg.seed, progress=False)
    info = runner.dataset.info
    try:
        defended = next(iter(spec.apply(copy.deepcopy(model), spec.Params(**params), ctx).values()))
        seconds = grad_seconds(defended, info, runner.device, n)
    except Exception:  # an estimate never fails a plan; the fallback cost stands
        return None
    if not reference:
        reference.append(grad_seconds(model, info, runner.device, n))
    return seconds / max(reference[0], 1e-9)


def _seconds(jobs: list[Job], cal: Calibration) -> float:
    rates: dict[str, Rate] = {"train": cal.train, "grad": cal.grad, "forward": cal.forward,
                              "call": cal.call, "step": cal.step}
    return sum(j.cost * rates[j.rate].seconds(j.passes, j.points, j.batch, j.rows) for j in jobs)


# ---------------------------------------------------------------------------------------------
# The units, by the runner's own keys


@dataclass
class _Planned:
    """A variant as the plan knows it (no model): label, key, whether it draws noise, the step
    that builds it (method, params, whether it trains), its parent, its evaluation jobs and the
    cost of its passes relative to the base model's."""

    label: str
    key: str
    stochastic: bool = False
    step: Optional[tuple] = None
    parent: Optional["_Planned"] = None
    jobs: list = field(default_factory=list, repr=False)
    cost: float = 1.0
    model: None = None


def _enumerate(runner) -> Plan:
    stages: dict[str, Stage] = {}
    variants = _base_stage(runner, stages) + _defense_stages(runner, stages)
    cascades = {"assumed": 0, "stored": 0}
    keys = _eval_stages(runner, variants, stages, cascades)
    plan = Plan(runner.cfg.name, runner.out, [s for s in stages.values() if s.units], unit_keys=keys,
                cascades=cascades)
    plan._variants = variants
    return plan


def _base_stage(runner, stages: dict) -> list[_Planned]:
    """The trained base: one unit unless the config loads a finished model; epochs already
    checkpointed in the run folder are not counted again."""
    from robustcompress.experiments.runner import BASE

    cfg = runner.cfg
    key = runner.base_key()
    stage = stages.setdefault("train base", Stage("train base"))
    if cfg.model.checkpoint or (cfg.model.weights and not cfg.model.fine_tune):
        return [_Planned(BASE, key)]
    stage.units = 1
    if runner._ckpt(key, BASE).with_suffix(".json").exists():
        stage.done = 1
        return [_Planned(BASE, key)]
    train = {"epochs": 2, **cfg.training}
    epochs = max(0, int(train["epochs"]) - _finished_epochs(runner.out / "train" / f"base-{key}"))
    stage.jobs = training_jobs(epochs, 1, train, len(runner.dataset.train), len(runner.dataset.test))
    stage.work = sum(j.steps for j in stage.jobs if j.rate == "train")
    return [_Planned(BASE, key)]


def _finished_epochs(ckdir: Path) -> int:
    try:
        return int(json.loads((ckdir / "state.json").read_text())["epoch"])  # epochs finished
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _defense_stages(runner, stages: dict) -> list[_Planned]:
    """Every defense step (per parent variant and grid combination), with the variants it
    produces; a step whose variant index exists in the run folder is done."""
    from robustcompress.defenses import get_defense
    from robustcompress.experiments.runner import BASE

    cfg = runner.cfg
    produced: dict[str, list[_Planned]] = {BASE: [_Planned(BASE, runner.base_key())]}
    out: list[_Planned] = []
    for d in runner.ordered_defenses():
        stage = stages.setdefault(f"defense {d.name}", Stage(f"defense {d.name} ({d.method})"))
        produced[d.name] = []
        for parent in produced[d.base]:
            for combo in expand_grid(d.grid) or [{}]:
                label = variant_label(d.name, combo)
                if len(produced[d.base]) > 1:
                    label = f"{parent.label}+{label}"
                params = {**d.params, **combo}
                key = runner.defense_key(parent.key, d, params)
                p = get_defense(d.method).Params(**params)
                stoch = parent.stochastic or is_stochastic(d.method, p)
                index = runner._ckpt(key, label).with_suffix(".variants.json")
                stage.units += 1
                train = {"seed": cfg.seed, **cfg.training, **d.training}
                jobs = defense_training(d.method, p, train, len(runner.dataset.train), len(runner.dataset.test))
                step = (d.method, params, any(j.rate == "train" for j in jobs))
                if index.exists():
                    stage.done += 1
                    new = [_Planned(e["label"], e["key"], stoch, step, parent)
                           for e in json.loads(index.read_text())]
                else:
                    stage.jobs += jobs
                    stage.work += sum(j.steps for j in jobs if j.rate == "train")
                    new = [_Planned(label if not s else f"{label}/{s}", stable_hash([key, s]), stoch,
                                    step, parent) for s in defense_outputs(d.method, p)]
                produced[d.name] += new
                out += new
    return out


class _KeyRecorder:
    """Stands in for the results store while the runner names its units: records each key and
    whether the real store has it done, and answers "done" so that nothing runs."""

    def __init__(self, done: set[str]):
        self.finished = done
        self.seen: list[tuple[str, bool]] = []

    def is_done(self, unit: str) -> bool:
        self.seen.append((unit, unit in self.finished))
        return True


def _done_units(db: Path) -> set[str]:
    """Units marked done in a run's results store (read only; none if there is no store)."""
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT unit FROM units")}
    except sqlite3.DatabaseError:
        return set()  # the run itself will say what is wrong with it
    finally:
        conn.close()


def _stored_accuracies(db: Path) -> dict[str, list[tuple]]:
    """``{unit: [(protocol, norm, eps_label, clean_acc, robust_acc)]}`` of a run's clean and
    paper-protocol rows (read only; none if there is no store)."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    out: dict[str, list[tuple]] = {}
    try:
        for unit, *row in conn.execute("SELECT unit, protocol, norm, eps_label, clean_acc, robust_acc "
                                       "FROM results WHERE protocol IN ('clean', 'paper')"):
            out.setdefault(unit, []).append(tuple(row))
    except sqlite3.DatabaseError:
        return {}
    finally:
        conn.close()
    return out


def _eval_stages(runner, variants: list[_Planned], stages: dict,
                 cascades: Optional[dict] = None) -> list[str]:
    """Every evaluation unit of every variant, named by the runner's ``_variant_units`` and
    ``_unit`` (so the keys are the runner's own), grouped by kind; the stored rows of a
    variant's finished clean and paper units size its cascades (counted in ``cascades``)."""
    cfg = runner.cfg
    cascades = {"assumed": 0, "stored": 0} if cascades is None else cascades
    rows = _stored_accuracies(runner.out / "results.db")
    recorder = _KeyRecorder(_done_units(runner.out / "results.db"))
    n = min(cfg.evaluation.n_samples, len(runner.dataset.test))
    threats = {(t.norm, label): t for t, label in runner.threats()}
    labels = {v.label for v in variants}
    surrogate = object() if cfg.evaluation.transfer_from in labels else None
    runner.models_by_label = {}
    for v in variants:
        ctx = EvalContext(cfg.evaluation, cfg.metrics, runner.dataset.info, n, v.stochastic, threats)
        for kind, _what, spec, fn in runner._variant_units(v, None, None, surrogate):
            runner._unit(recorder, kind, v, spec, fn)
            key, done = recorder.seen[-1]
            stage = stages.setdefault(f"eval {kind}", Stage(f"eval {kind}"))
            stage.units += 1
            if done:
                ctx.learn(rows.get(key, []))
                stage.done += 1
                continue
            if kind in ("adaptive", "standard"):
                cascades["assumed" if ctx.survival(spec[0], spec[1]).assumed else "stored"] += 1
            jobs = unit_jobs(kind, spec, ctx)
            passes = [j for j in jobs if j.rate in ("grad", "forward")]
            v.jobs += passes
            stage.jobs += jobs
            stage.work += sum(j.steps for j in passes)
    return [k for k, _ in recorder.seen]
