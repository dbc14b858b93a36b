"""Square attack: strength on a trained model, box/ball invariants, determinism, query accounting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.square import p_selection, sample_uniform
from robustcompress.errors import UserInputError
from test_attacks_eval_toys import NoisyDropout, digits_data, make_mlp, train_mlp


@pytest.fixture(scope="module")
def trained():
    xtr, ytr, xte, yte = digits_data()
    model = train_mlp(make_mlp(), xtr, ytr, steps=200)
    return model, xte[:100], yte[:100]


def test_square_breaks_trained_model_at_large_eps(trained):
    model, x, y = trained
    threat = ThreatModel.from_spec("linf", 0.3)
    res = run_attack("square", model, x, y, threat, n_queries=500,
                     generator=torch.Generator().manual_seed(0))
    assert res.robust_accuracy < 0.05
    assert (res.norm <= 0.3 + 1e-6).all()
    assert (model(res.x_adv).argmax(1) != y).float().mean() >= res.success.float().mean()
    # a small budget leaves the model largely intact: the attack is not a trivial perturbation
    small = run_attack("square", model, x, y, threat.with_eps(0.02), n_queries=100,
                       generator=torch.Generator().manual_seed(0))
    assert small.robust_accuracy > 0.6


def test_square_queries_only_still_robust_points(trained):
    model, x, y = trained
    threat = ThreatModel.from_spec("linf", 0.1)
    res = run_attack("square", model, x, y, threat, n_queries=200,
                     generator=torch.Generator().manual_seed(1))
    q = res.extra["queries"]
    assert (q >= 1).all() and (q <= 200).all()
    assert (q[~res.success] == 200).all()  # unbroken points used the whole budget
    assert (q[res.success] < 200).any()  # broken points stopped early


def test_square_same_seed_same_result_and_batch_invariant(trained):
    model, x, y = trained
    threat = ThreatModel.from_spec("linf", 0.1)
    kw = dict(n_queries=100)
    a = run_attack("square", model, x, y, threat, generator=torch.Generator().manual_seed(7), **kw)
    b = run_attack("square", model, x, y, threat, generator=torch.Generator().manual_seed(7),
                   batch_size=17, **kw)
    c = run_attack("square", model, x, y, threat, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_square_leaves_model_and_global_rng_alone(trained):
    from robustcompress.attacks.base import no_side_effects

    model, x, y = trained
    model.train()
    state = torch.get_rng_state()
    try:
        with no_side_effects(model):  # raises if mode or any .grad changed
            run_attack("square", model, x[:10], y[:10], ThreatModel.from_spec("linf", 0.1),
                       n_queries=20, generator=torch.Generator().manual_seed(0))
        assert torch.equal(state, torch.get_rng_state())
        assert model.training
    finally:
        model.eval()


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1),
       lo=st.sampled_from([0.0, -1.0]), shape=st.sampled_from([(1, 6, 6), (3, 5, 4), (2, 9)]))
def test_square_stays_in_ball_and_box(eps, seed, lo, shape):
    g = torch.Generator().manual_seed(seed)
    x = lo + (1.0 - lo) * torch.rand((4,) + shape, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), 3))
    y = torch.randint(0, 3, (4,), generator=g)
    eps = min(eps, 1.0 - lo)
    threat = ThreatModel.from_spec("linf", eps, bounds=(lo, 1.0))
    res = run_attack("square", model, x, y, threat, n_queries=30, generator=g)
    assert (res.x_adv - x).abs().max() <= eps + 1e-6
    assert res.x_adv.min() >= lo and res.x_adv.max() <= 1.0


def test_square_averages_scores_over_eot_draws():
    calls = {"n": 0}

    class Counting(nn.Module):
        def forward(self, h):
            calls["n"] += 1
            return h

    drop = NoisyDropout(0.3)
    model = nn.Sequential(nn.Flatten(), drop, nn.Linear(16, 4), Counting())
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(6, dtype=torch.long)
    res = run_attack("square", model, x, y, ThreatModel.from_spec("linf", 1e-4), n_queries=10,
                     eot_samples=5, mc_samples=3, generator=torch.Generator().manual_seed(0))
    assert res.params["eot_samples"] == 5
    per_query = 5  # one forward per draw (the batch is queried as a whole)
    queried_rounds = int(res.extra["queries"].max())
    assert calls["n"] >= per_query * queried_rounds


def test_square_refuses_l2():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UserInputError, match="linf"):
        run_attack("square", model, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long),
                   ThreatModel.from_spec("l2", 0.5))


def test_p_schedule_and_counter_based_uniforms():
    assert p_selection(0.8, 5, 10000) == 0.8
    assert p_selection(0.8, 30, 10000) == 0.4
    assert p_selection(0.8, 9000, 10000) == pytest.approx(0.8 / 512)
    assert p_selection(0.8, 50, 100) == pytest.approx(0.8 / 128)  # rescaled to 10k queries
    u = sample_uniform(torch.arange(2000), 3, 1, 8)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    assert torch.equal(sample_uniform(torch.tensor([5, 9]), 3, 1, 8), u[[5, 9]])


def test_draws_of_many_steps_at_once_equal_step_by_step():
    from robustcompress.attacks.square import uniform_block

    seeds = torch.tensor([3, 2**31 - 2, 77])
    block = uniform_block(seeds, torch.arange(5, 12), 4, 6)
    for j, step in enumerate(range(5, 12)):
        assert torch.equal(block[:, j], sample_uniform(seeds, step, 4, 6))


def test_a_proposal_that_would_not_move_the_point_takes_the_first_draw_that_does():
    from robustcompress.attacks.square import _MAX_ATTEMPTS, _proposal

    xc = torch.zeros(2, 1, 2, 2)  # at the lower box edge: a -eps proposal is clipped back
    mask = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    signs = -torch.ones(2, _MAX_ATTEMPTS, 1)
    signs[0, 3] = 1.0  # sample 0: attempts 0-2 cannot move it, attempt 3 can
    out = _proposal(xc, xc.clone(), mask, signs, 0.1, 0.0, 1.0, (1, 1, 1))
    assert torch.allclose(out[0], torch.full((1, 2, 2), 0.1)) and torch.equal(out[1], xc[1])
