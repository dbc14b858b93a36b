"""EOT gradients and MC verdicts on a stochastic toy (test-time dropout declaring its randomness)."""

import pytest
import torch
from torch import nn

from robustcompress.attacks import ExpectationModel, ThreatModel, input_gradient, mc_predict, run_attack
from robustcompress.attacks.base import judge, samples_vectorizable


class AlwaysDropout(nn.Module):
    """Dropout that stays on at test time and declares it (robustcompress.nn.protocol)."""

    def __init__(self, p: float, granularity: str = "sample"):
        super().__init__()
        self.p, self.stochastic, self.generator, self.granularity = p, True, None, granularity
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        if not self.stochastic:
            return h
        if self.granularity == "sample":
            keep = torch.rand(h.shape, generator=self.generator, device=h.device, dtype=h.dtype) >= self.p
        else:  # one mask shared by the whole batch
            keep = torch.rand(h.shape[1:], generator=self.generator, device=h.device, dtype=h.dtype) >= self.p
        return h * keep / (1 - self.p)


def toy(granularity="sample", p=0.5, seed=0):
    torch.manual_seed(seed)
    drop = AlwaysDropout(p, granularity)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), drop, nn.Linear(32, 3)).double()
    return net, drop


def inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def test_gradient_variance_shrinks_like_one_over_n():
    model, _ = toy()
    x, y = inputs()
    g = torch.Generator().manual_seed(0)

    def spread(n):
        grads = torch.stack([input_gradient(model, x, y, eot_samples=n, generator=g)[1] for _ in range(60)])
        return grads.var(0).sum()

    v1, v16 = spread(1), spread(16)
    ratio = float(v1 / v16)
    assert 8 < ratio < 32, ratio  # 16 independent draws: variance / 16 (sampling noise aside)


def test_vectorized_and_looped_paths_agree_in_expectation_and_cost():
    model_v, drop_v = toy("sample")
    x, y = inputs()
    assert samples_vectorizable(model_v)
    drop_v.calls = 0
    input_gradient(model_v, x, y, eot_samples=8, generator=torch.Generator().manual_seed(0))
    assert drop_v.calls == 1  # 8 draws stacked into one forward
    drop_v.calls = 0
    input_gradient(model_v, x, y, eot_samples=8, generator=torch.Generator().manual_seed(0), max_rows=2 * len(x))
    assert drop_v.calls == 4  # memory bound: 2 copies per forward

    # Same randomness law, forced through the looped path by declaring per-batch granularity.
    drop_v.granularity = "batch"
    assert not samples_vectorizable(model_v)
    drop_v.calls = 0
    input_gradient(model_v, x, y, eot_samples=8, generator=torch.Generator().manual_seed(0))
    assert drop_v.calls == 8
    drop_v.granularity = "sample"

    g = torch.Generator().manual_seed(5)
    vec = torch.stack([input_gradient(model_v, x, y, eot_samples=16, generator=g)[1] for _ in range(40)])
    drop_v.granularity = "batch"  # the toy still draws per element: only the code path changes
    loop = torch.stack([input_gradient(model_v, x, y, eot_samples=16, generator=g)[1] for _ in range(40)])
    drop_v.granularity = "sample"
    se = ((vec.var(0) + loop.var(0)) / 40).sqrt()
    z = ((vec.mean(0) - loop.mean(0)).abs() / se.clamp_min(1e-12))
    assert float((z < 4).double().mean()) > 0.97  # same expectation (4 standard errors)


def test_generator_makes_eot_reproducible_and_spares_the_global_rng():
    model, _ = toy()
    x, y = inputs()
    rng = torch.get_rng_state()
    a = input_gradient(model, x, y, eot_samples=4, generator=torch.Generator().manual_seed(3))[1]
    b = input_gradient(model, x, y, eot_samples=4, generator=torch.Generator().manual_seed(3))[1]
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), rng)
    p1 = mc_predict(model, x, mc_samples=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(p1.sum(1), torch.ones(len(x), dtype=p1.dtype))
    assert torch.equal(torch.get_rng_state(), rng)
    # the module's own generator attribute is restored after the call
    assert model[3].generator is None


def test_mc_predict_is_the_mean_of_single_draws_and_batch_chunking_is_invisible():
    model, _ = toy()
    x, y = inputs(n=7)
    full = mc_predict(model, x, mc_samples=12, generator=torch.Generator().manual_seed(0))
    chunked = mc_predict(model, x, mc_samples=12, generator=torch.Generator().manual_seed(1), batch_size=3)
    assert torch.allclose(full, chunked, atol=0.25)  # both estimates of the same expectation
    many = mc_predict(model, x, mc_samples=4000, generator=torch.Generator().manual_seed(2))
    few = torch.stack([mc_predict(model, x, mc_samples=1, generator=torch.Generator().manual_seed(s))
                       for s in range(400)]).mean(0)
    assert torch.allclose(many, few, atol=0.05)


def test_judge_fooled_any_dominates_success_and_deterministic_models_use_one_draw():
    model, drop = toy(p=0.7)
    x, y = inputs(n=40)
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    success, fooled_any, pred = judge(model, x, y, threat, mc_samples=20, generator=torch.Generator().manual_seed(0))
    assert bool((fooled_any | ~success).all())  # success implies fooled in some draw
    assert int(fooled_any.sum()) > int(success.sum())  # heavy dropout: single draws err far more
    drop.stochastic = False
    drop.calls = 0
    mc_predict(model, x, mc_samples=50)
    assert drop.calls == 1  # a deterministic model is never sampled twice


def test_expectation_model_averages_logits():
    model, _ = toy()
    x, _ = inputs()
    avg = ExpectationModel(model, samples=3000, generator=torch.Generator().manual_seed(0))(x)
    model[3].stochastic = False
    plain = model(x)  # E[dropout(h)] = h, and the last layer is linear
    model[3].stochastic = True
    assert torch.allclose(avg, plain, atol=0.05)


def test_run_attack_uses_eot_by_default_on_stochastic_models():
    model, drop = toy()
    x, y = inputs()
    drop.calls = 0
    res = run_attack("fgsm", model, x, y, ThreatModel("linf", 0.1, (0.0, 1.0)), mc_samples=5,
                     generator=torch.Generator().manual_seed(0))
    assert res.params["eot_samples"] == 20
    assert drop.calls == 2  # one stacked EOT forward + one stacked MC forward
    with pytest.raises(Exception):
        run_attack("fgsm", model, x, y, ThreatModel("linf", 0.1, (0.0, 1.0)), eot_samples=0)


def test_out_of_memory_falls_back_to_fewer_stacked_copies():
    model, drop = toy()
    x, y = inputs()

    class Limited(nn.Module):
        """Raises the CUDA out-of-memory error above 3 stacked copies of the batch."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, h):
            if h.shape[0] > 3 * len(x):
                raise torch.cuda.OutOfMemoryError("pretend the GPU is full")
            return self.net(h)

    limited = Limited(model)
    drop.calls = 0
    loss, grad = input_gradient(limited, x, y, eot_samples=8, generator=torch.Generator().manual_seed(0))
    assert drop.calls == 4  # 8 copies fail, 4+4 fail, then 2+2+2+2 copies per forward
    # the failed attempts drew no noise, so the result is the one of a 2-copy plan
    ref_loss, ref_grad = input_gradient(model, x, y, eot_samples=8, generator=torch.Generator().manual_seed(0),
                                        max_rows=2 * len(x))
    assert torch.equal(grad, ref_grad) and torch.equal(loss, ref_loss)
