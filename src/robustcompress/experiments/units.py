"""Evaluation units of the runner: their randomness, their rows, and the labels they carry.

A unit's identity is the hash of everything that defines it (the runner's ``_unit`` key). That
identity also seeds it: :func:`unit_rng` gives every unit (and every batch in it,
:func:`seed_for`) random streams that depend on the unit alone, never on what the process ran
before, so a resumed run equals an uninterrupted one bit for bit, stochastic variants included.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator

import torch

from robustcompress.experiments import distributed as dist_util
from robustcompress.experiments.config import stable_hash
from robustcompress.experiments.store import ResultRow


def seed_for(*parts: Any) -> int:
    """A 60-bit seed from the hash of ``parts``."""
    return int(stable_hash(list(parts), n=15), 16)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


@contextlib.contextmanager
def unit_rng(unit: str, device: torch.device) -> Iterator[None]:
    """Inside the block the global torch RNG (CPU, and ``device`` if CUDA) is seeded from the
    unit's identity; the previous state is restored afterwards. Anything a unit draws without an
    explicit generator (a stochastic forward, a library default) is then a function of the unit."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed_for("unit", unit))
        yield


def paper_labels(items: list) -> list[str]:
    """One distinct ``attack`` label per paper-protocol item: the attack name, or, when several
    items use the same attack, the name with the settings that tell them apart
    (``pgd[steps=20]``, ``pgd[steps=1]``); identical items get ``#k``. Rows of two items never
    share a label, so neither replaces the other in tables."""
    described = [{**item.attack_params(), **{k: getattr(item, k) for k in ("eot", "mc", "norm")
                                            if getattr(item, k) is not None}} for item in items]
    labels = []
    for i, item in enumerate(items):
        same = [j for j, other in enumerate(items) if other.attack == item.attack]
        if len(same) == 1:
            labels.append(item.attack)
            continue
        keys = sorted({k for j in same for k in described[j]})
        differ = [k for k in keys if len({repr(described[j].get(k)) for j in same}) > 1]
        inner = ",".join(f"{k}={described[i].get(k)}" for k in differ)
        label = f"{item.attack}[{inner}]" if inner else item.attack
        twins = [j for j in same if described[j] == described[i]]
        if len(twins) > 1:
            label += f"#{twins.index(i) + 1}"
        labels.append(label)
    return labels


def unbounded_threat(info, norm: str):
    """A threat whose eps covers the whole input box (Linf: its width; L2: its diameter), for
    minimal-perturbation attacks that should find the smallest adversarial with no budget."""
    from robustcompress.attacks import ThreatModel

    width = info.bounds[1] - info.bounds[0]
    eps = width if norm == "linf" else width * math.prod(info.shape) ** 0.5
    return ThreatModel.from_spec(norm=norm, eps=eps, info=info)


class NullWriter:
    """Where ranks other than 0 write (rows are gathered to rank 0)."""

    def add_result(self, row):
        pass

    def add_metric(self, *a, **k):
        pass


def adaptive_rows(reports: list, label: str, threat, eps_label: str, seconds: float,
                  protocol: str = "adaptive") -> list[ResultRow]:
    """Rows of one adaptive unit from its per-batch :class:`RobustnessReport` s.

    One row per attack of the cascade with the accuracy *after* that attack (the cascade only
    attacks points still robust), and a ``worst-case`` row: robust under every attack after the
    independent MC re-evaluation, with the gradient-masking flags in ``extra``.
    """
    labels = [a.label for a in reports[0].attacks]
    cat = lambda key: torch.cat([r.per_sample[key].cpu() for r in reports])  # noqa: E731
    clean, broken, worst, fooled = cat("clean_correct"), cat("broken_by"), cat("robust"), cat("fooled_any")
    flags: dict[str, bool] = {}
    for r in reports:
        for f in r.flags:
            flags[f.name] = flags.get(f.name, False) or bool(f.raised)
    settings = reports[0].settings
    n = len(clean)
    rows = []
    for i, name in enumerate(labels):
        robust_i = clean & ((broken == -1) | (broken > i))
        rows.append(ResultRow(label, name, protocol, threat.norm, threat.eps, eps_label, 0, n,
                              clean_acc=clean.float().mean().item(), robust_acc=robust_i.float().mean().item(),
                              seconds=sum(r.attacks[i].seconds for r in reports)))
    from robustcompress.attacks.robustness_report import jsonable

    rows.append(ResultRow(label, "worst-case", protocol, threat.norm, threat.eps, eps_label, 0, n,
                          clean_acc=clean.float().mean().item(), robust_acc=worst.float().mean().item(),
                          fooled_any=fooled.float().mean().item(), seconds=seconds,
                          extra={"settings": jsonable(settings), "masking_flags": flags,
                                 "flag_details": [f.to_dict() for r in reports for f in r.flags]}))
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return m, math.sqrt(var)


class UnitWork:
    """What each evaluation unit computes (clean verdict, a paper-protocol attack, the adaptive
    evaluation, r_2, the per-variant metrics), batch by batch with per-batch generators. Mixed
    into :class:`~robustcompress.experiments.runner.Runner`, which provides ``cfg``, ``device``,
    ``dataset`` and ``models_by_label``; ``w`` is the unit's row writer."""

    def _per_batch(self, unit_seed: list, x: torch.Tensor, y: torch.Tensor, fn) -> list:
        """Apply ``fn(xb, yb, generator, batch_index)`` batch by batch, each batch with its own
        generator, spread over the processes (see :mod:`.distributed`), gathered in order."""
        outs = []
        slices = batch_slices(len(y), self.cfg.evaluation.batch_size)
        for b in dist_util.my_indices(len(slices)):
            sl = slices[b]
            g = torch.Generator(device=self.device).manual_seed(seed_for(self.cfg.seed, unit_seed, b))
            xb, yb = x[sl].to(self.device), y[sl].to(self.device)
            outs.append((b, fn(xb, yb, g, b)))
        return dist_util.gather_ordered(outs)

    def clean_eval(self, w, v, x, y) -> None:
        """Clean accuracy judged like every verdict of the library (MC-averaged for stochastic
        models, ``mc_samples`` draws), plus the accuracy of a single draw."""
        parts = self._per_batch(["clean", v.key], x, y, lambda xb, yb, g, b: self._clean_batch(v, xb, yb, g))
        correct = torch.cat([p[0] for p in parts])
        single = torch.cat([p[1] for p in parts])
        w.add_result(ResultRow(v.label, "none", "clean", "none", 0.0, "0", 0, len(correct),
                               clean_acc=correct.float().mean().item(),
                               robust_acc=correct.float().mean().item(),
                               extra={"mc_samples": parts[0][2] if parts else 1,
                                      "single_draw_acc": single.float().mean().item()}))

    def _clean_batch(self, v, xb, yb, g):
        from robustcompress.attacks.base import draw_logits, prediction

        logits = draw_logits(v.model, xb, mc_samples=self.cfg.evaluation.mc_samples, generator=g)
        return (prediction(logits) == yb).cpu(), (logits[0].argmax(1) == yb).cpu(), logits.shape[0]

    def paper_attack(self, w, v, x, y, item, threat, eps_label: str, run: int,
                     label: str) -> None:
        """One attack of the paper protocol: ``eot`` gradient draws (default 1), ``mc`` draws for the
        verdict (default 1), i.e. the plain protocol the papers used unless the config says more.
        ``label`` names the item in the tables (:func:`~.units.paper_labels`)."""
        from robustcompress.attacks import run_attack

        eot, mc = item.eot or 1, item.mc or 1
        params = item.attack_params()
        if item.attack == "transfer":
            params = self._transfer_params(params)
        t0 = time.perf_counter()

        def one(xb, yb, g, b):
            res = run_attack(item.attack, v.model, xb, yb, threat, generator=g, eot_samples=eot,
                             mc_samples=mc, **params)
            return ~res.success.cpu(), res.fooled_any.cpu(), res.norm.cpu()

        parts = self._per_batch(["paper", v.key, item.model_dump(), threat.norm, eps_label, run], x, y, one)
        robust, fooled, norms = (torch.cat([p[i] for p in parts]) for i in range(3))
        w.add_result(ResultRow(v.label, label, "paper", threat.norm, threat.eps, eps_label, run,
                               len(robust), robust_acc=robust.float().mean().item(),
                               fooled_any=fooled.float().mean().item(),
                               mean_norm=norms.mean().item(), median_norm=norms.median().item(),
                               seconds=time.perf_counter() - t0,
                               extra={"eot": eot, "mc": mc, "params": item.attack_params()}))

    def _transfer_params(self, params: dict) -> dict:
        """Keyword parameters of a paper-protocol ``transfer`` item: ``surrogate`` names a variant
        (default: ``evaluation.transfer_from``), ``craft`` / ``craft_params`` name the attack run
        on it and its parameters (the transfer attack's ``attack`` / ``attack_params``, renamed
        because ``attack`` already names the item's attack)."""
        from robustcompress.errors import ConfigError

        params = dict(params)
        name = params.pop("surrogate", self.cfg.evaluation.transfer_from)
        if name is None:
            raise ConfigError("the transfer attack needs a surrogate: set evaluation.transfer_from "
                              "or `surrogate: VARIANT` on the attack item")
        if name not in self.models_by_label:
            raise ConfigError(f"transfer surrogate {name!r} is not a variant of this run; choose one of "
                              f"{', '.join(self.models_by_label)}")
        for ours, theirs in (("craft", "attack"), ("craft_params", "attack_params")):
            if ours in params:
                params[theirs] = params.pop(ours)
        return {**params, "surrogate": self.models_by_label[name]}

    def adaptive(self, w, v, x, y, threat, eps_label: str, surrogate) -> None:
        from robustcompress.attacks import evaluate_robustness
        from robustcompress.attacks.convergence import evaluate_until_converged

        ev = self.cfg.evaluation
        t0 = time.perf_counter()

        def one(xb, yb, g, b):
            # The gradient-masking checks run several extra attacks: once per unit (batch 0).
            kw = dict(surrogate_model=surrogate, mc_samples=ev.mc_samples,
                      apgd_steps=ev.apgd_steps, square_queries=ev.square_queries,
                      checks=ev.checks and b == 0, check_samples=ev.check_samples,
                      check_steps=ev.check_steps, generator=g, progress=False)
            if ev.converge_eot:
                rep = evaluate_until_converged(v.model, xb, yb, threat, eot_start=ev.eot_samples,
                                               eot_cap=ev.eot_cap, tol=ev.converge_tol, **kw)
            else:
                rep = evaluate_robustness(v.model, xb, yb, threat, eot_samples=ev.eot_samples, **kw)
            rep.x_adv = None  # not needed, and not worth gathering across processes
            return rep

        reports = self._per_batch(["adaptive", v.key, threat.norm, eps_label], x, y, one)
        for row in adaptive_rows(reports, v.label, threat, eps_label, time.perf_counter() - t0):
            w.add_result(row)

    def standard(self, w, v, x, y, threat, eps_label: str) -> None:
        """AutoAttack's standard protocol (:func:`robustcompress.attacks.standard.evaluate_standard`:
        APGD-CE, APGD-T, FAB-T, Square-5000; its randomized version for stochastic models), on a
        class-stratified subset of the evaluation points when ``standard_samples`` asks for one."""
        from robustcompress.attacks.standard import evaluate_standard
        from robustcompress.data.info import Split

        ev = self.cfg.evaluation
        t0 = time.perf_counter()
        part = Split(x, y).sample(ev.standard_samples)  # all points when standard_samples is None
        x, y = part.x, part.y

        def one(xb, yb, g, b):
            rep = evaluate_standard(v.model, xb, yb, threat, mc_samples=ev.mc_samples,
                                    checks=False, generator=g, progress=False)
            rep.x_adv = None
            return rep

        reports = self._per_batch(["standard", v.key, threat.norm, eps_label], x, y, one)
        for row in adaptive_rows(reports, v.label, threat, eps_label, time.perf_counter() - t0,
                                 protocol="standard"):
            w.add_result(row)

    def security(self, w, v, x, y, norm: str, attack: str) -> None:
        """Per-sample minimal distances in ``norm`` (``attack`` without a budget: eps = the whole
        box), for the security curve: 0 for points misclassified clean, None where none was found."""
        from robustcompress.attacks import get_attack, run_attack

        unbounded = unbounded_threat(self.dataset.info, norm)

        def one(xb, yb, g, b):
            with torch.no_grad():
                correct = (v.model(xb).argmax(1) == yb).cpu()
            # randomized variants: the run's EOT/MC budgets (the library defaults cost 4x more)
            draws = ({"eot_samples": self.cfg.evaluation.eot_samples}
                     if "eot_samples" in get_attack(attack).parameters else {})
            res = run_attack(attack, v.model, xb, yb, unbounded, generator=g,
                             mc_samples=self.cfg.evaluation.mc_samples, **draws)
            return correct, res.success.cpu(), res.norm.cpu()

        parts = self._per_batch(["security", v.key, norm, attack], x, y, one)
        correct, found, norms = (torch.cat([p[i] for p in parts]) for i in range(3))
        dist = [0.0 if not c else (float(d) if f else None) for c, f, d in zip(correct, found, norms)]
        w.add_result(ResultRow(v.label, attack, "security", norm, 0.0, "curve", 0, len(dist),
                               extra={"distances": dist}))

    def minimal(self, w, v, x, y, attack: str) -> None:
        """r_2 of Guo et al.: mean L2 norm of the minimal adversarial perturbation found by
        DeepFool or C&W on correctly classified points (absolute and relative to ||x||)."""
        from robustcompress.attacks import run_attack

        unbounded = unbounded_threat(self.dataset.info, "l2")
        t0 = time.perf_counter()

        def one(xb, yb, g, b):
            with torch.no_grad():
                correct = (v.model(xb).argmax(1) == yb).cpu()
            res = run_attack(attack, v.model, xb, yb, unbounded, generator=g)
            norms = res.norm.cpu()
            rel = norms / xb.flatten(1).norm(dim=1).clamp_min(1e-12).cpu()
            return res.success.cpu(), norms, rel, correct

        parts = self._per_batch(["minimal", v.key, attack], x, y, one)
        ok, norms, rel, correct = (torch.cat([p[i] for p in parts]) for i in range(4))
        sel = ok & correct
        found = bool(sel.any())
        w.add_result(ResultRow(v.label, attack, "minimal", "l2", 0.0, "min", 0, int(correct.sum()),
                               mean_norm=norms[sel].mean().item() if found else None,
                               median_norm=norms[sel].median().item() if found else None,
                               seconds=time.perf_counter() - t0,
                               extra={"r2_relative": rel[sel].mean().item() if found else None,
                                      "found": int(sel.sum())}))

    def variant_metrics(self, w, v, x, y) -> None:
        from robustcompress.experiments import collect_metrics

        g = torch.Generator(device=self.device).manual_seed(seed_for(self.cfg.seed, "metrics", v.key))
        reference = v.parent.model if v.parent is not None else None
        for key, value, extra in collect_metrics(v.model, self.dataset.info, x, y, self.cfg, self.device,
                                                 generator=g, reference=reference):
            w.add_metric(v.label, key, value, extra)
