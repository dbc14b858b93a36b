"""Issue #17 part 1, Square: the query loop looks at the host only at the checks, results unchanged.

* The loop equals the one it replaced (copied below verbatim as the reference: the active rows
  looked up every iteration, redraws for the rows that need them), bit for bit in ``x_adv``, the
  margins and the query counts: with the host checking every iteration (CPU's default) and at the
  accelerator schedule (rows frozen between checks, redraws computed for every row), on a model
  whose per-row scores are bitwise independent of the batch; at CPU's default also on an
  ``nn.Linear`` model (the same rows are queried as before).
* The number of host syncs grows with the number of checks, not of queries.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import robustcompress.attacks.iterative as iterative
from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.iterative import CHECK_EVERY, check_due
from test_attacks_sync_free import RowLinear, counting_syncs

# the package binds the name ``square`` to the attack function
sq = importlib.import_module("robustcompress.attacks.square")
_MAX_ATTEMPTS, SquareOutput, uniform_block = sq._MAX_ATTEMPTS, sq.SquareOutput, sq.uniform_block
averaged_margin, p_selection, window_mask, _signs = (sq.averaged_margin, sq.p_selection,
                                                     sq.window_mask, sq._signs)


# ------------------------------------------------------------------ the previous loop, verbatim
class _Draws:
    def __init__(self, seeds: torch.Tensor, n_spatial: int, channels: int, n_queries: int):
        self.seeds, self.n_spatial, self.channels, self.n_queries = seeds, n_spatial, channels, n_queries
        self.span = max(1, min(100, 2_000_000 // max(1, seeds.numel() * _MAX_ATTEMPTS * channels)))
        self.start = None

    def at(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.start is None or not self.start <= it < self.start + self.span:
            self.start = it
            steps = torch.arange(it, min(it + self.span, self.n_queries))
            self.window = uniform_block(self.seeds, steps, 1, self.n_spatial)
            u = torch.stack([uniform_block(self.seeds, steps, 2 + a, self.channels)
                             for a in range(_MAX_ATTEMPTS)], dim=2)
            self.signs = torch.where(u < 0.5, -1.0, 1.0)
        j = it - self.start
        return self.window[:, j], self.signs[:, j]


def old_proposal(xc, xb, mask, signs, eps, lo, hi, sign_view) -> torch.Tensor:
    n = xc.shape[0]
    delta = xb - xc
    x_new = (xc + torch.where(mask, eps * signs[:, 0].view((n,) + sign_view), delta)).clamp(lo, hi)
    todo = (((x_new - xb).abs() < 1e-7) | ~mask).flatten(1).all(dim=1).nonzero().flatten()
    rest = _MAX_ATTEMPTS - 1
    chunk = max(1, 4_000_000 // (rest * xc[0].numel()))
    for part in todo.split(chunk):
        t = part.numel()
        s_rest = signs[part, 1:].view((t, rest) + sign_view)
        cand = (xc[part, None] + torch.where(mask[part, None], eps * s_rest, delta[part, None])).clamp(lo, hi)
        moved = ~(((cand - xb[part, None]).abs() < 1e-7) | ~mask[part, None]).flatten(2).all(dim=2)
        first = torch.where(moved.any(dim=1), moved.to(torch.uint8).argmax(dim=1), rest - 1)
        x_new[part] = cand[torch.arange(t, device=cand.device), first]
    return x_new


def old_square(model, x, y, *, eps, bounds=(0.0, 1.0), targeted=False, n_queries=5000, p_init=0.8,
               eot_samples=1, seeds=None) -> SquareOutput:
    lo, hi = bounds
    x0 = x.detach()
    x_view = x0[:, None, :] if x0.dim() == 2 else x0  # flat features: one channel
    B, C = x_view.shape[:2]
    spatial = tuple(x_view.shape[2:])
    n_features = x_view[0].numel()
    dev = x0.device
    if seeds is None:
        seeds = torch.arange(B, device=dev, dtype=torch.int64)
    seeds = seeds.to(device=dev, dtype=torch.int64)

    def fwd_margin(xv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return averaged_margin(model, xv.view((-1,) + x0.shape[1:]), y[idx], targeted, eot_samples)

    stripe_shape = (C,) + (1,) * (len(spatial) - 1) + (spatial[-1],)
    x_best = (x_view + eps * _signs(seeds, 0, 0, stripe_shape, x0)).clamp(lo, hi)
    margin_best = fwd_margin(x_best, torch.arange(B, device=dev))
    queries = torch.ones(B, dtype=torch.long, device=dev)
    sign_view = (C,) + (1,) * len(spatial)
    draws = _Draws(seeds, len(spatial), C, n_queries)

    for it in range(1, n_queries):
        idx = (margin_best >= 0).nonzero().flatten()
        if idx.numel() == 0:
            break
        xc, xb = x_view[idx], x_best[idx]
        p = p_selection(p_init, it, n_queries)
        side = round((p * n_features / C) ** (1.0 / len(spatial)))
        side = max(1, min(side, min(spatial) - 1)) if min(spatial) > 1 else 1
        u_window, signs = draws.at(it)
        mask = window_mask(spatial, side, u_window[idx])
        signs = signs[idx].to(x0.dtype)
        x_new = old_proposal(xc, xb, mask, signs, eps, lo, hi, sign_view)
        m_new = fwd_margin(x_new, idx)
        queries[idx] += 1
        better = m_new < margin_best[idx]
        margin_best[idx] = torch.where(better, m_new, margin_best[idx])
        x_best[idx[better]] = x_new[better]
    return SquareOutput(x_best.view(x0.shape), margin_best, queries)


# ------------------------------------------------------------------ cases
SHAPES = {"flat": (24,), "1d": (2, 12), "2d": (2, 3, 4), "3d": (1, 2, 3, 4)}


def row_model(seed: int = 0) -> nn.Module:
    """Per-row scores bitwise independent of the batch (see ``RowLinear``)."""
    torch.manual_seed(seed)  # construction only
    return nn.Sequential(nn.Flatten(), RowLinear(24, 16), nn.Tanh(), RowLinear(16, 10))


def data(model: nn.Module, shape: tuple, n: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + shape, generator=g, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10  # some clean errors: never queried
    target = (y + 1 + torch.randint(0, 9, (n,), generator=g)) % 10
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=g)
    return x, y, target, seeds


def same(a: SquareOutput, b: SquareOutput) -> bool:
    return (torch.equal(a.x_adv, b.x_adv) and torch.equal(a.margin, b.margin)
            and torch.equal(a.queries, b.queries))


@pytest.fixture(params=[1, CHECK_EVERY], ids=lambda k: f"check{k}")
def every(request, monkeypatch):
    """Run with the host checking every ``k``-th iteration (CPU's default is 1)."""
    monkeypatch.setattr(iterative, "check_interval", lambda device: request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("targeted", [False, True])
def test_loop_equals_previous_loop(every, shape, targeted):
    """3 seeds x 3 batch sizes x 3 eps (few / some / most samples fall) x eot 1, 2 per case."""
    model = row_model()
    fell_between_checks = 0
    for seed in (0, 1, 2):
        for n in (1, 5, 32):
            x, y, target, seeds = data(model, SHAPES[shape], n, seed)
            labels = target if targeted else y
            for eps in (0.01, 0.06, 0.3):
                for eot in (1, 2):
                    kw = dict(eps=eps, targeted=targeted, n_queries=80, eot_samples=eot,
                              seeds=seeds)
                    new = sq.square_linf_perturb(model, x, labels, **kw)
                    assert same(new, old_square(model, x, labels, **kw)), (seed, n, eps, eot)
                    fallen = new.queries[(new.margin < 0) & (new.queries < 80)]
                    fell_between_checks += sum(not check_due(int(q), every) for q in fallen)
    # samples fell where a check was not due: with interval 8 they ran frozen until the next one
    assert fell_between_checks > (0 if every > 1 else -1)


@pytest.mark.parametrize("targeted", [False, True])
def test_cpu_default_equals_previous_loop_on_batch_dependent_model(targeted):
    """CPU checks every iteration: the same rows are queried as before, so even a GEMM model
    (per-row results may depend on the batch size) gives the same bits."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 10))
    for shape in SHAPES:
        x, y, target, seeds = data(model, SHAPES[shape], 40, 4, dtype=torch.float32)
        labels = target if targeted else y
        for eps in (0.02, 0.1):
            kw = dict(eps=eps, targeted=targeted, n_queries=150, eot_samples=1, seeds=seeds)
            new = sq.square_linf_perturb(model, x, labels, **kw)
            assert same(new, old_square(model, x, labels, **kw))


@pytest.mark.parametrize("lo", [0.0, -1.0])
def test_redraws_for_all_rows_equal_redraws_for_rows_that_need_them(lo):
    """``_proposal`` without ``nonzero`` (in several row chunks) equals the previous one, on rows
    whose first ``k`` draws (``k`` = 0 .. all of them) repeat the current point's signs, so the
    first moving redraw, or the last draw, is taken; some points lie on the box's faces."""
    g = torch.Generator().manual_seed(0)
    n, H, W, eps = 88, 64, 64, 0.5
    for C in (1, 3):  # one row chunk; three (4M / (9 * 3 * 4096) = 36 rows each)
        xc = torch.rand(n, C, H, W, generator=g)
        on_face = torch.rand(n, C, H, W, generator=g) < 0.3
        xc = torch.where(on_face, xc.round(), xc) * (1.0 - lo) + lo
        s0 = torch.where(torch.rand(n, C, generator=g) < 0.5, -1.0, 1.0)
        xb = (xc + eps * s0[:, :, None, None]).clamp(lo, 1.0)
        signs = torch.where(torch.rand(n, _MAX_ATTEMPTS, C, generator=g) < 0.5, -1.0, 1.0)
        repeats = torch.arange(n) % (_MAX_ATTEMPTS + 1)  # row r: its first r % 11 draws repeat s0
        repeat = (torch.arange(_MAX_ATTEMPTS) < repeats[:, None])[:, :, None]
        signs = torch.where(repeat, s0[:, None], signs)
        for side in (1, 2, 7):
            mask = window_mask((H, W), side, torch.rand(n, 2, generator=g))
            args = (xc, xb, mask, signs, eps, lo, 1.0, (C, 1, 1))
            ref = old_proposal(*args)
            assert torch.equal(sq._proposal(*args, all_rows=True), ref)
            assert torch.equal(sq._proposal(*args, all_rows=False), ref)


# ------------------------------------------------------------------ host syncs
def _syncs(model, x, y, eps, n_queries) -> int:
    with counting_syncs() as c:
        run_attack("square", model, x, y, ThreatModel("linf", eps, (0.0, 1.0)), n_queries=n_queries,
                   generator=torch.Generator().manual_seed(0))
    return c.count


def _checks(n_queries: int, every: int) -> int:
    return sum(check_due(it, every) for it in range(1, n_queries))


@pytest.mark.parametrize("eps", [1e-4, 0.05])  # nobody falls / samples fall all along
def test_syncs_grow_with_checks_not_queries(monkeypatch, eps):
    k = CHECK_EVERY
    monkeypatch.setattr(iterative, "check_interval", lambda device: k)
    model = row_model()
    x, y, _, _ = data(model, SHAPES["2d"], 32, 1)
    s100, s200 = _syncs(model, x, y, eps, 100), _syncs(model, x, y, eps, 200)
    assert s200 - s100 == _checks(200, k) - _checks(100, k)  # one per check, none per query
    assert s100 <= _checks(100, k) + 12 < 30  # + seeds, the initial point, the verdict
    # the previous loop made about 4 per query (405 at 100 queries on 32 samples)


def test_loop_ends_at_the_first_check_with_nobody_left(monkeypatch):
    monkeypatch.setattr(iterative, "check_interval", lambda device: CHECK_EVERY)
    calls = []
    model = row_model()
    x, y, _, seeds = data(model, SHAPES["2d"], 16, 0)
    model.register_forward_hook(lambda *a: calls.append(1))
    out = sq.square_linf_perturb(model, x, y, eps=0.3, n_queries=100, seeds=seeds)
    assert bool((out.margin < 0).all())
    last = int(out.queries.max())  # every sample had fallen after iteration ``last - 1``
    nxt = next(it for it in range(last, 100) if check_due(it, CHECK_EVERY))
    assert nxt > last > 8  # the last one fell between checks: frozen rows ran until ``nxt``
    assert len(calls) == nxt  # the initial forward and iterations 1 .. nxt - 1
