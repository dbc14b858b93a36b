"""The runner: one config -> trained base -> defended variants -> evaluations -> store -> report.

Units of work and their dependencies::

    base model ──> defense variant ──> (variant that builds on it, e.g. ADV+SAP)
        │                 │
        └──> metrics      └──> metrics, paper-protocol attacks, adaptive evaluation, r_2

Every unit has a key (hash of exactly the configuration it depends on). A model unit is finished
when its checkpoint (safetensors + JSON, written atomically) exists; an evaluation unit when its
rows are committed to the results store together with its done-mark. A re-run skips finished
units, so Ctrl-C or ``kill -9`` loses at most the unit in progress, and no row is duplicated.

Randomness: every evaluation batch draws from its own generator seeded by
``hash(seed, unit, batch index)``, so results do not depend on how batches are spread over
processes (see :mod:`robustcompress.experiments.distributed`); anything drawn from the global
RNG inside a unit is seeded from the unit's key (:func:`~.units.unit_rng`), so a resumed run
equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from robustcompress.experiments import distributed as dist_util
from robustcompress.experiments.config import (
    ExperimentConfig,
    eps_matches,
    expand_grid,
    stable_hash,
    variant_label,
)
from robustcompress.experiments.config import eps_label as format_eps_label
from robustcompress.experiments.config_sources import build_base, file_digest, key_dict
from robustcompress.experiments.store import ResultsStore
from robustcompress.training.config import model_identity
from robustcompress.training.state import config_key
from robustcompress.experiments.units import (  # noqa: F401  (mean_std, batch_slices: older imports)
    NullWriter,
    UnitWork,
    batch_slices,
    mean_std,
    paper_labels,
    unit_rng,
)

BASE = "base"
# How the evaluation points are chosen; part of every evaluation unit's key. "first-n" (before
# 2026-11-22) took the first n test points, a single class on class-sorted datasets.
EVAL_POINTS = "stratified"


@dataclass
class VariantPlan:
    """A defense step of the plan (before its variants are known)."""

    name: str  # label incl. grid combo, e.g. "sap[frac=1.0]"
    method: str
    params: dict[str, Any]
    parent: str  # label of the model it starts from ("base" or another defense name/label)
    training: dict[str, Any]
    key: str = ""


@dataclass
class Variant:
    """A concrete model to evaluate."""

    label: str
    key: str
    model: nn.Module
    method: Optional[str] = None
    parent: Optional["Variant"] = None


@dataclass
class RunSummary:
    output_dir: Path
    variants: list[str]
    units_run: int
    units_skipped: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    unit_keys: list[str] = field(default_factory=list)


class Runner(UnitWork):
    """Runs an :class:`ExperimentConfig` end to end (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, *, progress: bool = True, console=None,
                 log: Optional[Callable[[str], None]] = None):
        from robustcompress.device import resolve_device

        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.output_dir or Path("runs") / cfg.name)
        self.device = resolve_device(cfg.device)
        self.console = console
        self._log = log or (lambda msg: None)
        self.stage_seconds: dict[str, float] = {}
        self.units_run = 0
        self.units_skipped = 0
        self.unit_keys: list[str] = []
        self.rank, self.world = dist_util.rank_and_world()

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        """Progress line (rank 0 only); printed literally, so labels like sap[frac=1.0] survive."""
        if self.rank == 0:
            from rich.markup import escape

            self._log(escape(msg))

    def _timed(self, stage: str, t0: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ plan
    def ordered_defenses(self):
        """Defense sections in dependency order (a defense after the one it builds on)."""
        done, out, pending = {BASE}, [], list(self.cfg.defenses)
        while pending:
            ready = [d for d in pending if d.base in done]
            if not ready:  # config validation refuses this; never loop forever on it
                from robustcompress.errors import ConfigError

                raise ConfigError("defenses " + ", ".join(f"{d.name} (base: {d.base})" for d in pending)
                                  + " build on each other in a cycle or on a missing defense; "
                                  "make each base a defense listed in the config or 'base'")
            for d in ready:
                out.append(d)
                done.add(d.name)
                pending.remove(d)
        return out

    def base_key(self) -> str:
        c = self.cfg
        parts = [key_dict(c.dataset), key_dict(c.model), model_identity(c.training), c.seed]
        if c.model.weights:  # replaced weights under the same path are another base model
            parts.append(file_digest(c.model.weights))
        return stable_hash(parts)

    @staticmethod
    def defense_key(parent_key: str, d, params: dict) -> str:
        """Key of defense section ``d`` applied with ``params`` to the variant keyed ``parent_key``
        (result-neutral training options left out: setting one retrains nothing; the defense's
        ``revision`` in when > 0: a fixed defense rebuilds its variants)."""
        from robustcompress.defenses import get_defense

        parts = [parent_key, d.method, params, model_identity(d.training)]
        revision = get_defense(d.method).revision
        return stable_hash(parts + [{"revision": revision}] if revision else parts)

    # ------------------------------------------------------------------ run
    def run(self) -> RunSummary:
        """Run every unit not yet done, holding the output folder's lock (rank 0) so that a
        second run on the same folder stops at once instead of redoing and overwriting work."""
        from robustcompress.experiments.lock import output_lock

        from robustcompress.training.accel import deterministic_kernels

        lock = output_lock(self.out) if self.rank == 0 else contextlib.nullcontext()
        # deterministic cuDNN for the whole run on a GPU (training.deterministic, default true):
        # resumed and sharded runs then give the same rows as an uninterrupted 1-process run
        with lock, deterministic_kernels(self.device, self.cfg.training.get("deterministic", True)):
            return self._run()

    def _share_rank0(self, model: nn.Module) -> nn.Module:
        """Under torchrun, every rank continues with rank 0's weights and buffers (the ones rank
        0 saves): replicas trained apart can differ in the last bits on a GPU."""
        if self.world > 1:
            from robustcompress.training import ddp

            ddp.broadcast_state(model, ddp.World(self.rank, self.world))
        return model

    def _run(self) -> RunSummary:
        from robustcompress.data import load_dataset

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self.cfg.model_dump(mode="json"), indent=2))
        t0 = time.perf_counter()
        ds = self.cfg.dataset
        self.dataset = load_dataset(ds.name, ds.path or ds.data_dir, train_limit=ds.train_limit,
                                    test_limit=ds.test_limit, **ds.loader_options())
        self._timed("data", t0)
        store = ResultsStore(self.out / "results.db")
        try:
            variants = self.build_models()
            self.evaluate_all(variants, store)
        finally:
            store.close()
        # the units of this config: what `robustcompress results` shows from a shared folder
        (self.out / "units.json").write_text(json.dumps(self.unit_keys))
        return RunSummary(self.out, [v.label for v in variants], self.units_run, self.units_skipped,
                          dict(self.stage_seconds), list(self.unit_keys))

    # ------------------------------------------------------------------ models
    def _ckpt(self, key: str, label: str) -> Path:
        """Checkpoint stem of a variant: readable label + key, no dots (suffixes are added)."""
        return self.out / "models" / f"{self.label_safe(label)}-{key}"

    def build_models(self) -> list[Variant]:
        """Train (or load) the base model, then every defense variant, parents first."""
        from robustcompress.training import load_checkpoint

        t0 = time.perf_counter()
        base = Variant(BASE, self.base_key(), self.train_base())
        self._timed("train base", t0)
        produced: dict[str, list[Variant]] = {BASE: [base]}
        variants = [base]
        for d in self.ordered_defenses():
            t0 = time.perf_counter()
            produced[d.name] = []
            for parent in produced[d.base]:
                for combo in expand_grid(d.grid) or [{}]:
                    label = variant_label(d.name, combo)
                    if len(produced[d.base]) > 1:  # say which of the parent's variants it builds on
                        label = f"{parent.label}+{label}"
                    params = {**d.params, **combo}
                    key = self.defense_key(parent.key, d, params)
                    step = VariantPlan(label, d.method, params, parent.label, dict(d.training), key)
                    index_path = self._ckpt(key, label).with_suffix(".variants.json")
                    if dist_util.agreed(index_path.exists()):
                        self.units_skipped += 1
                        entries = json.loads(index_path.read_text())
                        new = [Variant(e["label"], e["key"], load_checkpoint(e["path"], device=self.device),
                                       d.method, parent) for e in entries]
                        self.log(f"[skip] {label}: already built")
                    else:
                        self.log(f"[defense] {label} ({d.method}) from {parent.label}")
                        new = self.apply_defense(step, parent, index_path)
                        self.units_run += 1
                    produced[d.name] += new
                    variants += new
            self._timed(f"defense {d.method}", t0)
        return variants

    def train_base(self) -> nn.Module:
        """The trained base: a checkpoint (``model.checkpoint``) or a factory model with weights
        as they are (unless ``model.fine_tune``); otherwise trained with ``training``, resumable."""
        from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint

        cfg = self.cfg
        if cfg.model.checkpoint:
            return load_checkpoint(cfg.model.checkpoint, device=self.device)
        if cfg.model.weights and not cfg.model.fine_tune:
            self.log(f"[load] base {cfg.model.factory} with weights {cfg.model.weights}")
            return build_base(cfg.model, self.dataset.info).to(self.device).eval()
        path = self._ckpt(self.base_key(), BASE)
        if dist_util.agreed(path.with_suffix(".json").exists()):
            self.units_skipped += 1
            self.log("[skip] base model already trained")
            return load_checkpoint(path, device=self.device)
        torch.manual_seed(cfg.seed)  # weight init of the fresh model (documented: the only global seeding)
        model = build_base(cfg.model, self.dataset.info)
        tcfg = TrainConfig(**{"seed": cfg.seed, **cfg.training})
        self.log(f"[train] base {cfg.model.factory or cfg.model.name} on {cfg.dataset.name} for "
                 f"{tcfg.epochs} epoch(s)")
        res = fit(model, self.dataset, tcfg, checkpoint_dir=self.out / "train" / f"base-{self.base_key()}",
                  device=self.device, progress=self.progress and self.rank == 0,
                  distributed=tcfg.data_parallel is True)  # replicated unless asked: exact results
        model = self._share_rank0(res.model)
        if self.rank == 0:
            save_checkpoint(model, path, {"config": tcfg.model_dump(mode="json"), "metrics": res.metrics,
                                          "dataset": self.dataset.info.to_dict()})
        dist_util.barrier()
        self.units_run += 1
        return model

    def apply_defense(self, step: VariantPlan, parent: Variant, index_path: Path) -> list[Variant]:
        """Run one defense step and save every model it returns (atomically, then the index)."""
        from robustcompress.defenses import DefenseContext, defense_records, get_defense
        from robustcompress.training import fit, save_checkpoint

        spec = get_defense(step.method)
        params = spec.Params(**step.params)
        workdir = self.out / "train" / f"{self.label_safe(step.name)}-{step.key}"
        calls = [0]  # a defense may train several times (progressive rounds): one folder per call

        def ctx_fit(model, objective=None, dataset=None, **overrides):
            tcfg = ctx.train_config(**overrides)  # the run's recipe + the defense's overrides
            calls[0] += 1
            parts = [config_key(tcfg), type(objective).__name__]  # what a resume must match
            if dataset is not None:  # training on its own data (feedback learning's augmented set)
                parts.append(len(dataset.train))
            sub = workdir / f"fit{calls[0]}-{stable_hash(parts)}"
            return fit(model, self.dataset if dataset is None else dataset, tcfg, objective=objective,
                       checkpoint_dir=sub, device=self.device, progress=self.progress and self.rank == 0,
                       distributed=tcfg.data_parallel is True).model

        ctx = DefenseContext(dataset=self.dataset, device=self.device, seed=self.cfg.seed,
                             workdir=workdir, fit=ctx_fit, progress=self.progress,
                             base_models={parent.label: parent.model},
                             recipe={"seed": self.cfg.seed, **self.cfg.training, **step.training})
        outputs = spec.apply(copy.deepcopy(parent.model), params, ctx)
        entries, produced = [], []
        for suffix, model in outputs.items():
            label = step.name if not suffix else f"{step.name}/{suffix}"
            key = stable_hash([step.key, suffix])
            model = self._share_rank0(model.to(self.device))
            recipe = defense_records(model)
            path = self._ckpt(key, label)
            if self.rank == 0:
                save_checkpoint(model, path, {"variant": label, "defense": step.method,
                                              "params": params.model_dump(mode="json"),
                                              "dataset": self.dataset.info.to_dict(), "recipe": recipe})
            entries.append({"label": label, "key": key, "path": str(path)})
            produced.append(Variant(label, key, model, step.method, parent))
        if self.rank == 0:
            tmp = index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=2))
            tmp.replace(index_path)
        dist_util.barrier()
        return produced

    @staticmethod
    def label_safe(label: str) -> str:
        """A file-name-safe form of a variant label (letters, digits, - and _ only)."""
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:60]

    # ------------------------------------------------------------------ evaluation
    def eval_data(self):
        """The ``n_samples`` evaluation points: a class-stratified subset of the test split (see
        :meth:`robustcompress.data.info.Split.sample`; ``EVAL_POINTS`` names that choice in every
        unit key, so results measured on other points are never reused)."""
        n = min(self.cfg.evaluation.n_samples, len(self.dataset.test))
        split = self.dataset.test.sample(n)
        return split.x, split.y

    def threats(self):
        from robustcompress.attacks import ThreatModel

        out = []
        for t in self.cfg.evaluation.threats:
            for eps in t.eps:
                tm = ThreatModel.from_spec(norm=t.norm, eps=eps, info=self.dataset.info, eps_scale=t.eps_scale)
                label = format_eps_label(eps, t.eps_scale)
                out.append((tm, label))
        return out

    def evaluate_all(self, variants: list[Variant], store: ResultsStore) -> None:
        x, y = self.eval_data()
        self.models_by_label = {v.label: v.model for v in variants}
        surrogate = next((v.model for v in variants if v.label == self.cfg.evaluation.transfer_from), None)
        for v in variants:  # all of them now: a variant can be a transfer surrogate before its turn
            v.model.eval()  # (fit leaves train mode; crafting on it would move its BN statistics)
        for i, v in enumerate(variants, 1):
            self.log(f"[eval] {v.label} ({i}/{len(variants)}): metrics, clean, paper protocol"
                     + (", standard" if self.cfg.evaluation.standard else "")
                     + (", adaptive" if self.cfg.evaluation.adaptive else "")
                     + (", r_2" if self.cfg.evaluation.minimal else ""))
            v.model.eval()
            self._run_units(store, v, self._variant_units(v, x, y, surrogate))

    def _variant_units(self, v: Variant, x, y, surrogate) -> list[tuple[str, str, list, Callable]]:
        """``(kind, description, spec, fn)`` of every evaluation unit of ``v``, in run order."""
        ev = self.cfg.evaluation
        units: list[tuple[str, str, list, Callable]] = [
            ("metrics", "metrics", [], lambda w, v=v: self.variant_metrics(w, v, x, y)),
            ("clean", "clean", [], lambda w, v=v: self.clean_eval(w, v, x, y))]
        labels = paper_labels(ev.paper)
        for threat, eps_label in self.threats():
            for item, label in zip(ev.paper, labels):
                if item.norm and item.norm != threat.norm:
                    continue
                for run in range(ev.runs):
                    what = f"paper {label} {threat.norm} {eps_label}" + (f" run {run}" if ev.runs > 1 else "")
                    units.append(("paper", what, [item.model_dump(), threat.norm, eps_label, run],
                                  lambda w, v=v, item=item, t=threat, e=eps_label, r=run, lab=label:
                                  self.paper_attack(w, v, x, y, item, t, e, r, lab)))
            if ev.standard and self._selected_eps(eps_label, ev.standard_eps or ev.adaptive_eps):
                subset = [] if ev.standard_samples is None else [ev.standard_samples]  # old keys stay valid
                units.append(("standard", f"standard {threat.norm} {eps_label}", [threat.norm, eps_label] + subset,
                              lambda w, v=v, t=threat, e=eps_label: self.standard(w, v, x, y, t, e)))
            if ev.adaptive and self._selected_eps(eps_label, ev.adaptive_eps):
                sur = surrogate if (surrogate is not None and v.label != ev.transfer_from) else None
                units.append(("adaptive", f"adaptive {threat.norm} {eps_label}",
                              [threat.norm, eps_label, sur is not None],
                              lambda w, v=v, t=threat, e=eps_label, s=sur: self.adaptive(w, v, x, y, t, e, s)))
        if ev.security:
            for norm in sorted({t.norm for t in ev.threats}):
                units.append(("security", f"security {ev.security} {norm}", [norm, ev.security],
                              lambda w, v=v, n=norm: self.security(w, v, x, y, n, ev.security)))
        for attack in ev.minimal:
            units.append(("minimal", f"minimal {attack}", [attack],
                          lambda w, v=v, a=attack: self.minimal(w, v, x, y, a)))
        return units

    def _run_units(self, store: ResultsStore, v: Variant, units: list) -> None:
        """Runs ``v``'s units; after one that ran (and took a second or more, or after the
        variant's last), a line with the variant's progress and an ETA (mean time of the units
        run so far times the units left)."""
        from robustcompress.progress import eta_seconds, format_eta

        spent, ran = 0.0, 0
        for k, (kind, what, spec, fn) in enumerate(units, 1):
            before, t0 = self.units_run, time.perf_counter()
            self._unit(store, kind, v, spec, fn)
            if self.units_run == before:
                continue  # already in the store
            took = time.perf_counter() - t0
            spent, ran = spent + took, ran + 1
            if took < 1.0 and k < len(units):
                continue  # quick units get no line of their own
            eta = format_eta(eta_seconds(spent, ran, ran + len(units) - k))
            self.log(f"[eval] {v.label}: {k}/{len(units)} units, {what} done in {took:.1f}s; "
                     f"ETA {eta} for this variant")

    @staticmethod
    def _selected_eps(label: str, wanted: Optional[list]) -> bool:
        """Whether eps ``label`` is among ``wanted`` (None: every eps)."""
        return wanted is None or any(eps_matches(e, label) for e in wanted)

    def _unit(self, store: ResultsStore, kind: str, v: Variant, spec: list, fn) -> None:
        ev = self.cfg.evaluation
        settings = [ev.n_samples, ev.batch_size, ev.eot_samples, ev.mc_samples, ev.apgd_steps,
                    ev.square_queries, ev.checks, ev.check_samples, ev.check_steps, self.cfg.seed,
                    EVAL_POINTS]
        if ev.converge_eot:  # (absent otherwise: keys of earlier runs stay valid)
            settings.append(["converge", ev.eot_cap, ev.converge_tol])
        if kind == "metrics":
            settings = [ev.n_samples, self.cfg.metrics.model_dump(), EVAL_POINTS]
        unit = stable_hash([kind, v.key, spec, settings])
        self.unit_keys.append(unit)
        if dist_util.agreed(store.is_done(unit)):
            self.units_skipped += 1
            return
        t0 = time.perf_counter()
        with unit_rng(unit, self.device):
            if self.rank == 0:
                with store.unit(unit, kind, v.label) as w:
                    fn(w)
            else:
                fn(NullWriter())
        dist_util.barrier()
        self.units_run += 1
        self._timed(f"eval {kind}", t0)

    # -- one unit each ---------------------------------------------------------------------
