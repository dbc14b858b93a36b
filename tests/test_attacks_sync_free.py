"""Issue #17 part 1: the iterative attacks' step loops run without host syncs, results unchanged.

* Outcomes of PGD/BIM/MIM against a bare full-batch loop written here (no dropping, no checks),
  and of every iterative attack (APGD-CE/DLR/T included) against a per-sample loop (batch of one),
  bit for bit, on a model whose per-row outputs are bitwise independent of the batch; with the host
  checking every iterate (CPU's default), every 3rd and at the accelerator schedule (frozen rows).
* The number of host syncs grows with the number of checks, not of steps.
* The stochastic path (final point, or the point where a sample left) and a SAP model.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import robustcompress.attacks.iterative as iterative
from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.apgd import apgd
from robustcompress.attacks.iterative import CHECK_EVERY, check_due, check_interval
from robustcompress.attacks.pgd import pgd
from robustcompress.attacks.seeds import SampleNoise
from robustcompress.nn.sap import SAP

EPS = {("linf", False): 0.04, ("l2", False): 0.2, ("linf", True): 0.12, ("l2", True): 0.4}


class RowLinear(nn.Module):
    """``x @ w.T + b`` as a broadcast product and a sum over the last axis: per-row results do not
    depend on the batch, bit for bit (``nn.Linear``'s GEMM picks kernels by batch size)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_out, d_in, dtype=torch.float64) * 3 / d_in ** 0.5)
        self.b = nn.Parameter(torch.randn(d_out, dtype=torch.float64) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) * self.w).sum(-1) + self.b


class FakeNoise(nn.Module):
    """Declares itself stochastic (so attacks take the final-point path) but returns its input."""

    granularity = "sample"
    non_differentiable = False

    def __init__(self):
        super().__init__()
        self.stochastic, self.generator = True, None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h


def row_mlp(seed: int = 0, noise: bool = False) -> nn.Module:
    torch.manual_seed(seed)  # construction only
    layers = [nn.Flatten(), RowLinear(24, 16), nn.Tanh()] + ([FakeNoise()] if noise else [])
    return nn.Sequential(*layers, RowLinear(16, 10))


def batch(model: nn.Module, n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 3, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10  # some clean errors: they leave at iterate 0
    target = (y + 1 + torch.randint(0, 9, (n,), generator=g)) % 10
    return x, y, target


@pytest.fixture(params=[1, 3, CHECK_EVERY], ids=lambda k: f"check{k}")
def every(request, monkeypatch):
    """Run with the host checking every ``k``-th iterate (CPU's default is 1)."""
    monkeypatch.setattr(iterative, "check_interval", lambda device: request.param)
    return request.param


def test_row_mlp_is_batch_invariant():
    model = row_mlp()
    x, y, _ = batch(model)
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    (g,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), xi)
    for rows in ([0], [3, 7], list(range(1, 24, 2))):
        xr = x[rows].clone().requires_grad_(True)
        o = model(xr)
        (gr,) = torch.autograd.grad(F.cross_entropy(o, y[rows], reduction="sum"), xr)
        assert torch.equal(o, out[rows]) and torch.equal(gr, g[rows])


def test_check_schedule():
    assert check_interval(torch.device("cpu")) == 1
    assert check_interval(torch.device("meta")) == CHECK_EVERY
    assert [t for t in range(20) if check_due(t, 8)] == [0, 1, 2, 4, 8, 16]
    assert all(check_due(t, 1) for t in range(10))


# ------------------------------------------------------------------ an independent bare loop
def _better(s, o, best_s, best_o):
    return (s & ~best_s) | ((s == best_s) & (o > best_o))


def _rows(mask, like):
    return mask.view(-1, *([1] * (like.dim() - 1)))


def bare_pgd(model, x, y, threat, *, steps, step_size, restarts=1, random_start=True,
             early_stop=True, momentum=None, final_only=False, generator=None):
    """PGD/BIM/MIM on the whole batch every step, written from the papers and the documented
    semantics: per sample the best iterate (success, then larger objective, earlier on ties) over
    all restarts; with ``early_stop`` a sample's first success ends it and later restarts skip it;
    ``final_only``: the final iterate, or the one where the sample left. Random starts are drawn
    for the pending rows as one batch, as PGD does: the L2 start's ``u ** (1/d)`` is not bitwise
    batch-invariant on CPU (vectorised vs scalar ``pow``), the loop itself is."""
    noise = SampleNoise(len(x), generator, x.device) if random_start else None
    bx, bo = x.clone(), torch.full((len(x),), float("-inf"), dtype=x.dtype)
    bs = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(restarts):
        pending = ~bs if early_stop else torch.ones_like(bs)
        xa = x.clone()
        if random_start:  # drawn for the pending rows only, as one batch (see the docstring)
            rows = pending.nonzero().squeeze(1).tolist()
            xa[rows] = threat.random_start(x[rows], noise.select(rows))
        rx, ro, rs = xa.clone(), torch.full_like(bo, float("-inf")), torch.zeros_like(bs)
        alive, v = pending.clone(), torch.zeros_like(x)
        for t in range(steps + 1):
            xi = xa.detach().requires_grad_(True)
            logits = model(xi)
            obj = F.cross_entropy(logits, y, reduction="none") * (-1 if threat.targeted else 1)
            (g,) = torch.autograd.grad(obj.sum(), xi)
            s = logits.argmax(1) == y if threat.targeted else logits.argmax(1) != y
            offered = alive
            if final_only and t < steps:  # only the point where a sample leaves
                offered = alive & s if early_stop else torch.zeros_like(s)
            b = _better(s, obj.detach(), rs, ro) & offered
            rx, ro = torch.where(_rows(b, x), xi.detach(), rx), torch.where(b, obj.detach(), ro)
            rs = torch.where(b, s, rs)
            if t == steps:
                break
            alive = alive & ~s if early_stop else alive
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            if momentum is not None:
                v = momentum * v + g / _rows(g.abs().flatten(1).sum(1).clamp_min(1e-12), g)
                g = v
            stepped = threat.project(xa + step_size * threat.steepest(g), x)
            xa = torch.where(_rows(alive, x), stepped, xa)
        b = _better(rs, ro, bs, bo) & pending
        bx, bo, bs = torch.where(_rows(b, x), rx, bx), torch.where(b, ro, bo), torch.where(b, rs, bs)
    return bx, bs, bo


ITERATIVE = {  # attack kwargs, and the bare loop's
    "pgd": (dict(steps=12, restarts=3), dict(restarts=3)),
    "bim": (dict(steps=12), dict(random_start=False)),
    "mim": (dict(steps=12), dict(random_start=False, momentum=1.0)),
}


@pytest.mark.parametrize("name", ITERATIVE)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("early_stop", [True, False])
def test_iterative_equals_bare_loop(every, name, norm, targeted, early_stop):
    model = row_mlp()
    x, y, target = batch(model)
    labels = target if targeted else y
    threat = ThreatModel(norm, EPS[norm, targeted], (0.0, 1.0), targeted=targeted)
    kw, bare_kw = ITERATIVE[name]
    steps = kw["steps"]
    step = threat.eps / steps if name == "mim" else 2.5 * threat.eps / steps
    res = run_attack(name, model, x, labels, threat, early_stop=early_stop,
                     generator=torch.Generator().manual_seed(5), **kw)
    bx, bs, bo = bare_pgd(model, x, labels, threat, steps=steps, step_size=step, early_stop=early_stop,
                          generator=torch.Generator().manual_seed(5), **bare_kw)
    assert torch.equal(res.x_adv, bx)
    assert torch.equal(res.success, bs)
    assert torch.equal(res.extra["objective"], bo)
    assert 0 < int(bs.sum()) < len(x)  # the case is not trivial


PER_SAMPLE = {
    "pgd": dict(steps=10, restarts=2), "bim": dict(steps=10), "mim": dict(steps=10),
    "apgd": dict(steps=10, restarts=2), "apgd-dlr": dict(steps=10, restarts=2, loss="dlr"),
    "apgd-t": dict(steps=6, restarts=2, n_target_classes=3),
}


@pytest.mark.parametrize("name", PER_SAMPLE)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("early_stop", [True, False])
def test_batched_equals_per_sample_loop(every, name, norm, early_stop):
    """One sample at a time, one generator in turn (per-sample random streams)."""
    model = row_mlp(1)
    x, y, target = batch(model, n=10, seed=2)
    targeted = name in ("pgd", "mim") and early_stop  # targeted where the attack allows it
    labels = target if targeted else y
    threat = ThreatModel(norm, EPS[norm, targeted], (0.0, 1.0), targeted=targeted)
    kw = dict(PER_SAMPLE[name])
    attack = "apgd" if name == "apgd-dlr" else name
    whole = run_attack(attack, model, x, labels, threat, early_stop=early_stop,
                       generator=torch.Generator().manual_seed(3), **kw)
    gen = torch.Generator().manual_seed(3)
    parts = [run_attack(attack, model, x[i:i + 1], labels[i:i + 1], threat, early_stop=early_stop,
                        generator=gen, **kw) for i in range(len(x))]
    assert torch.equal(whole.x_adv, torch.cat([p.x_adv for p in parts]))
    assert torch.equal(whole.success, torch.cat([p.success for p in parts]))
    assert torch.equal(whole.extra["objective"], torch.cat([p.extra["objective"] for p in parts]))


# ------------------------------------------------------------------ the stochastic path
@pytest.mark.parametrize("early_stop", [True, False])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_stochastic_path_keeps_final_or_leaving_point(every, early_stop, norm):
    """A model declaring randomness gets the final iterate, or the point where it left."""
    model = row_mlp(noise=True)
    x, y, _ = batch(model)
    threat = ThreatModel(norm, EPS[norm, False], (0.0, 1.0))
    res = pgd(model, x, y, threat, steps=12, restarts=2, early_stop=early_stop, mc_samples=2,
              generator=torch.Generator().manual_seed(4))
    bx, bs, bo = bare_pgd(model, x, y, threat, steps=12, step_size=2.5 * threat.eps / 12, restarts=2,
                          early_stop=early_stop, final_only=True, generator=torch.Generator().manual_seed(4))
    # a stochastic model's point is projected once more and judged afresh (verdicts.finish)
    assert torch.equal(res.x_adv, threat.project(bx, x)) and torch.equal(res.extra["objective"], bo)
    assert torch.equal(res.success, bs)


@pytest.mark.parametrize("early_stop", [True, False])
def test_sap_model_runs_with_frozen_rows(every, early_stop):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(24, 32), nn.ReLU(), SAP(), nn.Linear(32, 10))
    x = torch.rand(12, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(1))
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    runs = [pgd(model, x, y, threat, steps=8, early_stop=early_stop, eot_samples=2, mc_samples=4,
                generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].success, runs[1].success)
    assert bool((threat.norm_of(runs[0].x_adv - x) <= threat.eps + 1e-6).all())


# ------------------------------------------------------------------ host syncs
class HostSyncs(TorchDispatchMode):
    """Counts the ops that make a GPU's host wait: ``item``/``bool``/``int``/``float`` of a tensor
    (``_local_scalar_dense``), ``nonzero``, ``masked_select``, boolean-mask indexing; plus
    ``tolist``/``numpy`` (patched, as they dispatch no op on CPU)."""

    SYNCING = ("aten._local_scalar_dense", "aten.nonzero.", "aten.masked_select", "aten.is_nonzero")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masked = name.startswith(("aten.index.", "aten.index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
        if masked or name.startswith(self.SYNCING):
            self.count += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_syncs():
    mode = HostSyncs()
    saved = torch.Tensor.tolist, torch.Tensor.numpy

    def counted(fn):
        def wrapper(t, *a, **k):
            mode.count += 1
            return fn(t, *a, **k)
        return wrapper

    torch.Tensor.tolist, torch.Tensor.numpy = counted(saved[0]), counted(saved[1])
    try:
        with mode:
            yield mode
    finally:
        torch.Tensor.tolist, torch.Tensor.numpy = saved


def test_sync_counter_sees_syncs():
    t = torch.tensor([0.0, 2.0])
    with counting_syncs() as c:
        bool(t.any()), t.sum().item(), t[t > 1], t.nonzero(), t.tolist()
    assert c.count == 5


def _syncs(fn) -> int:
    with counting_syncs() as c:
        fn()
    return c.count


def _checks(steps: int, every: int) -> int:
    return sum(check_due(t, every) for t in range(steps))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_syncs_grow_with_checks_not_steps(monkeypatch, norm):
    k = CHECK_EVERY
    monkeypatch.setattr(iterative, "check_interval", lambda device: k)
    model = row_mlp()
    x, y, _ = batch(model)
    y = model(x).argmax(1).detach()  # nobody starts misclassified
    threat = ThreatModel(norm, 1e-4, (0.0, 1.0))  # nobody falls: every step runs

    def run(steps, early_stop=True, model=model, x=x, y=y, threat=threat):
        return _syncs(lambda: pgd(model, x, y, threat, steps=steps, early_stop=early_stop,
                                  generator=torch.Generator().manual_seed(0)))

    s20, s40 = run(20), run(40)
    assert s40 - s20 == _checks(40, k) - _checks(20, k)  # one per check, none per step
    assert s20 <= _checks(20, k) + 4 < 20  # + seeds, pending rows, the verdict
    assert run(20, early_stop=False) == run(40, early_stop=False) <= 4


def test_syncs_stay_per_check_while_samples_leave(monkeypatch):
    """Samples falling at various steps are frozen and dropped with gathers, not masks."""
    monkeypatch.setattr(iterative, "check_interval", lambda device: 4)
    model = row_mlp()
    x, y, _ = batch(model, n=48)
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    with counting_syncs() as c:
        res = pgd(model, x, y, threat, steps=24, restarts=1, generator=torch.Generator().manual_seed(0))
    assert 0 < int(res.success.sum()) < len(x)
    assert c.count <= _checks(24, 4) + 4


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_step_loop_has_no_syncs(loss):
    model = row_mlp()
    x, y, _ = batch(model)
    threat = ThreatModel("linf", 0.05, (0.0, 1.0))
    counts = [_syncs(lambda s=s: apgd(model, x, y, threat, steps=s, restarts=2, loss=loss,
                                      generator=torch.Generator().manual_seed(0)))
              for s in (10, 30)]
    assert counts[0] == counts[1] <= 8  # per restart and per attack only


@pytest.mark.parametrize("kind", ["fab", "fab-t"])
def test_fab_syncs_do_not_grow_with_steps(kind):
    """FAB's step loop has no host sync (untargeted: the class list is built once, without a
    boolean mask); the remaining ones are per restart and target."""
    model = row_mlp()
    x, y, _ = batch(model)
    threat = ThreatModel("linf", 1e-3, (0.0, 1.0))

    def run(steps):
        return _syncs(lambda: run_attack(kind, model, x, y, threat, steps=steps, restarts=1,
                                         generator=torch.Generator().manual_seed(0)))

    assert run(5) == run(20)


def test_cw_syncs_are_per_abort_check_not_per_step():
    """C&W keeps its best adversarials with torch.where (no boolean-mask copy per step); the
    early-abort check runs every steps // 10 steps, so syncs stay flat as steps grow."""
    model = row_mlp()
    x, y, _ = batch(model)
    threat = ThreatModel("l2", 1e-2, (0.0, 1.0))

    def run(steps):
        return _syncs(lambda: run_attack("cw", model, x, y, threat, steps=steps,
                                         generator=torch.Generator().manual_seed(0)))

    few, many = run(10), run(100)
    assert many - few <= 10  # was about 2 per step and search step: hundreds more
