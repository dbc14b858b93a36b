"""SAP operator: exact sampling statistics, unbiasedness, backward, numerics, randomness."""

import itertools
import math

import pytest
import torch
from scipy import stats

import robustcompress.nn.sap as sap_module
from robustcompress.errors import UserInputError
from robustcompress.nn.sap import SAP, keep_probability, num_draws, sap, sap_mask


def interpreted_triton_kernels():
    """The CUDA sampler's Triton kernels when Triton's interpreter is on (conftest turns it on
    where no GPU driver is present), else None."""
    try:
        import triton
        from robustcompress.nn import _sap_triton
    except ImportError:
        return None
    return _sap_triton if triton.knobs.runtime.interpret else None


@pytest.fixture(params=["compiled", "torch", "triton"])
def backend(request, monkeypatch):
    """Run a test with the compiled CPU kernel (default on CPU), the vectorised torch cell table
    (the CPU fallback without numba, and CUDA without triton) and the CUDA Triton kernels (run by
    Triton's interpreter on CPU tensors; skipped without triton)."""
    if request.param == "torch":
        monkeypatch.setattr(sap_module, "_compiled_kernel", lambda: None)
    elif request.param == "triton":
        kernels = interpreted_triton_kernels()
        if kernels is None:
            pytest.skip("needs triton with TRITON_INTERPRET=1 (a GPU machine tests the kernels on CUDA)")
        monkeypatch.setattr(sap_module, "_triton_kernels", lambda device: kernels)
    elif sap_module._compiled_kernel() is None:
        pytest.skip("numba is not installed: no compiled SAP kernel")
    return request.param


def _draws(h, n, gen, method="exact", frac=1.0):
    """n independent SAP outputs of h (stacked as a batch of n copies: one call)."""
    rows = h.reshape(1, -1).expand(n, -1).contiguous()
    return sap(rows, frac, generator=gen, method=method)


def _keep(h, frac=1.0):
    a = h.abs().double().reshape(-1)
    p = a / a.sum()
    r = num_draws(a.numel(), frac)
    return -torch.expm1(r * torch.log1p(-p))


def _row():
    g = torch.Generator().manual_seed(3)
    h = torch.relu(torch.randn(40, generator=g)) ** 2  # heavy tail, zeros, small entries
    h[5] = 1e-6
    h[7] = 5.0
    return h


@pytest.mark.parametrize("method", ["exact", "bernoulli"])
def test_keep_frequencies_match_one_minus_one_minus_p_to_the_r(backend, method, gen):
    h = _row()
    n = 40000
    kept = (_draws(h, n, gen, method) != 0).double().mean(0)
    keep = _keep(h)
    se = (keep * (1 - keep) / n).sqrt().clamp_min(1e-4)
    z = ((kept - keep) / se).abs()
    assert z.max() < 5.0, (z.max(), kept, keep)


@pytest.mark.parametrize("method", ["exact", "bernoulli"])
@pytest.mark.parametrize("frac", [1.0, 0.3])
def test_sap_output_is_unbiased(backend, method, frac, gen):
    h = _row() * torch.where(torch.arange(40) % 3 == 0, -1.0, 1.0)  # signs: |h| is used
    n = 40000
    out = _draws(h, n, gen, method, frac).double()
    keep = _keep(h, frac)
    sd = (h.double().abs() * ((1 / keep.clamp_min(1e-300)) - 1).clamp_min(0).sqrt()) / math.sqrt(n)
    z = ((out.mean(0) - h.double()).abs() / sd.clamp_min(1e-9))
    assert z[h != 0].max() < 5.0
    assert (out[:, h == 0] == 0).all()


def _pattern_probs(p, r):
    """Exact P(set of drawn indices == S) for r draws with replacement (inclusion-exclusion)."""
    d = len(p)
    probs = {}
    for bits in itertools.product([0, 1], repeat=d):
        s = [i for i in range(d) if bits[i]]
        tot = 0.0
        for k in range(len(s) + 1):
            for t in itertools.combinations(s, k):
                tot += (-1) ** (len(s) - k) * sum(p[i] for i in t) ** r
        probs[bits] = tot
    return probs


def _pattern_counts(drawn):
    counts = {}
    for row in drawn.to(torch.int64).tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return counts


def test_exact_sampler_joint_law_matches_inclusion_exclusion_and_multinomial(backend, gen):
    # Joint law of the kept set (not only marginals): chi-square against the exact probabilities,
    # and a two-sample test against torch.multinomial; the Bernoulli approximation must fail it.
    h = torch.tensor([3.0, 1.0, 0.5, 0.25, 0.1])
    p = (h / h.sum()).tolist()
    r = 5
    exact = _pattern_probs(p, r)
    n = 30000
    ours = _pattern_counts(_draws(h, n, gen) != 0)
    idx = torch.multinomial(h.expand(n, -1), r, replacement=True, generator=gen)
    ref = _pattern_counts(torch.zeros(n, 5).scatter_(1, idx, 1.0) != 0)
    bern = _pattern_counts(_draws(h, n, gen, "bernoulli") != 0)
    keys = [k for k, v in exact.items() if v * n >= 5]
    expected = torch.tensor([exact[k] * n for k in keys])
    for counts, should_pass in ((ours, True), (ref, True), (bern, False)):
        observed = torch.tensor([counts.get(k, 0) for k in keys], dtype=torch.float64)
        chi2 = float(((observed - expected) ** 2 / expected).sum())
        pval = stats.chi2.sf(chi2, len(keys) - 1)
        assert (pval > 1e-3) == should_pass, (should_pass, chi2, pval)
    table = [[ours.get(k, 0) for k in keys], [ref.get(k, 0) for k in keys]]
    assert stats.chi2_contingency(table)[1] > 1e-3


def test_exact_sampler_large_row_with_zero_runs(backend, gen):
    # a feature-map-like row: long runs of zeros, a few large entries, many tiny ones
    g = torch.Generator().manual_seed(1)
    h = torch.relu(torch.randn(8, 3000, generator=g) - 1.0)
    h[:, 100:900] = 0
    h[:, 1000:1100] = 1e-7
    n = 200
    out = sap(h.repeat(n, 1), generator=gen)
    kept = (out != 0).double().view(n, 8, -1).mean(0)
    keep = torch.stack([_keep(row) for row in h])
    assert (out.view(n, 8, -1)[:, h == 0] == 0).all()
    se = (keep * (1 - keep) / n).sqrt().clamp_min(0.02)
    assert (((kept - keep) / se).abs() < 6).all()


def test_mask_is_constant_in_backward(backend):
    h = torch.randn(4, 3, 5, 5).relu().requires_grad_(True)
    w = torch.randn(4, 3, 5, 5)
    mask = sap_mask(h, generator=torch.Generator().manual_seed(7))
    out = sap(h, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out.detach(), h.detach() * mask)
    (grad,) = torch.autograd.grad((out * w).sum(), h)
    assert torch.equal(grad, w * mask)  # no gradient through p or the rescale


def test_torch_func_grad_composes_and_vmap_support_is_as_documented(monkeypatch):
    h = torch.rand(2, 10)
    grad = torch.func.grad(lambda t: sap(t, generator=torch.Generator().manual_seed(1)).sum())(h)
    # under torch.func the exact sampler takes the torch path (the kernel needs real storage)
    monkeypatch.setattr(sap_module, "_compiled_kernel", lambda: None)
    assert torch.equal(grad, sap_mask(h, generator=torch.Generator().manual_seed(1)))
    rows = torch.rand(10).expand(64, 10)
    different = torch.func.vmap(lambda t: sap(t[None], method="bernoulli"), randomness="different")(rows)
    same = torch.func.vmap(lambda t: sap(t[None], method="bernoulli"), randomness="same")(rows)
    assert (different != different[0]).any() and (same == same[0]).all()
    # exact sampler: documented as not vmappable, with one message naming the alternatives
    with pytest.raises(RuntimeError, match="vmap.*stack copies of the batch.*bernoulli"):
        torch.func.vmap(lambda t: sap(t[None]), randomness="different")(h)
    with pytest.raises(RuntimeError, match="stack copies"):  # also under grad(vmap(...))
        torch.func.grad(lambda t: torch.func.vmap(lambda u: sap(u[None]).sum())(t).sum())(h)


def test_all_zero_rows_and_tiny_probabilities_are_safe(backend, gen):
    h = torch.zeros(3, 50)
    h[1, 0] = 1e30
    h[1, 1:] = 1e-30
    h[2] = torch.rand(50)
    h.requires_grad_(True)
    for method in ("exact", "bernoulli"):
        out = sap(h, generator=gen, method=method)
        assert torch.isfinite(out).all()
        assert (out[0] == 0).all()
        (g,) = torch.autograd.grad(out.sum(), h)
        assert torch.isfinite(g).all()
    p = torch.tensor([1e-12, 1e-20, 0.0, 1.0], dtype=torch.float64)
    kp = keep_probability(p, 1000)
    assert torch.allclose(kp[:2], 1000 * p[:2], rtol=1e-6) and kp[2] == 0 and kp[3] == 1


def test_batch_rows_are_independent_draws_with_the_same_law(backend, gen):
    # Vectorised over the batch: identical rows get independent masks with the per-row law of a
    # single-sample call (a loop over samples).
    h = _row()
    n = 4000
    batched = _draws(h, n, gen) != 0
    loops = 200 if backend == "triton" else n  # interpreted kernels: ~50 ms a call
    looped = torch.stack([sap(h[None], generator=gen)[0] != 0 for _ in range(loops)])
    assert stats.chi2_contingency([batched.sum(0)[h != 0] + 1, looped.sum(0)[h != 0] + 1])[1] > 1e-3
    a, b = batched[0::2].double(), batched[1::2].double()
    corr = ((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (a.std(0) * b.std(0) + 1e-12)
    assert corr.abs().max() < 0.15


def test_generator_reproducible_and_global_rng_untouched(backend):
    h = torch.rand(5, 2, 6, 6)
    state = torch.get_rng_state()
    a = sap(h, generator=torch.Generator().manual_seed(11))
    b = sap(h, generator=torch.Generator().manual_seed(11))
    c = sap(h, generator=torch.Generator().manual_seed(12))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_module_protocol_and_freeze(gen):
    from robustcompress.nn import freeze_noise, model_properties

    layer = SAP(0.5, generator=gen)
    assert layer.stochastic and layer.granularity == "sample" and not layer.non_differentiable
    assert model_properties(torch.nn.Sequential(layer)).stochastic
    h = torch.rand(3, 20)
    with freeze_noise(layer):
        assert torch.equal(layer(h), h)
    assert not torch.equal(layer(h), h)


def test_bad_arguments_raise_user_errors():
    for kwargs in ({"frac": 0}, {"frac": -1.0}, {"method": "multinomial"}):
        with pytest.raises(UserInputError):
            sap(torch.rand(2, 3), **kwargs)
    assert num_draws(10, 0.01) == 1 and num_draws(100, 1.0) == 100


def test_exact_sampler_boundaries_on_cell_edges_give_the_occupancy_law(backend, gen):
    # Equal entries put every CDF boundary exactly on a cell edge of the cell table (and with
    # frac=2, two draws per entry, several cells hold boundaries): the number of distinct kept
    # entries must follow the classical occupancy law of r draws among D equally likely cells.
    from math import comb, factorial

    from scipy.special import stirling2

    for d, frac in ((6, 1.0), (5, 2.0)):
        r = num_draws(d, frac)
        n = 20000
        kept = (_draws(torch.ones(d), n, gen, frac=frac) != 0).sum(1)
        ks = range(1, d + 1)
        expected = torch.tensor([comb(d, k) * float(stirling2(r, k, exact=True)) * factorial(k)
                                 / d ** r for k in ks], dtype=torch.float64) * n
        observed = torch.stack([(kept == k).sum() for k in ks]).double()
        use = expected > 5
        chi2 = float(((observed[use] - expected[use]) ** 2 / expected[use]).sum())
        assert stats.chi2.sf(chi2, int(use.sum()) - 1) > 1e-3, (d, frac, observed, expected)


def test_compiled_keep_probability_matches_torch_float64():
    kernel = pytest.importorskip("robustcompress.nn._sap_cpu")
    ps = torch.cat([torch.logspace(-12, 0, 600, dtype=torch.float64),
                    torch.linspace(0.9, 1.1, 101, dtype=torch.float64) * 2.0 ** -10])
    for r in (1, 2, 7, 100, 5000, 10 ** 7):
        ref = keep_probability(ps, r)
        got = torch.tensor([kernel.keep_probability(float(p), r) for p in ps], dtype=torch.float64)
        assert ((got - ref).abs() / ref).max() < 1e-12, r


def test_compiled_sampler_ignores_thread_count_and_handles_float64():
    if sap_module._compiled_kernel() is None:
        pytest.skip("numba is not installed: no compiled SAP kernel")
    h = torch.relu(torch.randn(4 * sap_module.MIN_ROW_CHUNK, 3, 7, 7, generator=torch.Generator().manual_seed(0)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sap_mask(h, generator=torch.Generator().manual_seed(5))
        torch.set_num_threads(2)
        two = sap_mask(h, generator=torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    m64 = sap_mask(h.double(), generator=torch.Generator().manual_seed(5))
    assert m64.dtype == torch.float64
    assert torch.equal(m64 != 0, one != 0)  # same seeds, same draws: float64 only refines 1/keep
    assert torch.allclose(m64.float(), one, rtol=1e-5)


def test_unusable_compiled_kernel_falls_back_to_the_torch_sampler_with_a_warning(monkeypatch):
    kernel = pytest.importorskip("robustcompress.nn._sap_cpu")

    def broken(*args):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(kernel, "sap_rows", broken)
    sap_module._compiled_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="torch sampler"):
            assert sap_module._compiled_kernel() is None
        out = sap(torch.rand(3, 20), generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()
    finally:
        monkeypatch.undo()
        sap_module._compiled_kernel.cache_clear()
    assert sap_module._compiled_kernel() is not None


def test_unusable_triton_kernels_fall_back_to_the_torch_sampler_with_a_warning(monkeypatch):
    kernels = pytest.importorskip("robustcompress.nn._sap_triton")

    def broken(*args):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(kernels, "inverse_keep", broken)
    from robustcompress.triton_support import load_kernels

    with pytest.warns(RuntimeWarning, match="Triton SAP sampler is unavailable"):
        assert load_kernels.__wrapped__("robustcompress.nn._sap_triton", "cpu", sap_module._warm_up,
                                        "SAP sampler") is None
    assert sap_module._triton_kernels(torch.device("cpu")) is None  # only CUDA tensors use them


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
def test_cuda_exact_sampler_law_and_reproducibility():
    """On a GPU: the sampler CUDA tensors get (the Triton kernels where triton is installed)
    keeps entries with probability 1 - (1 - p)^r, is unbiased, and follows the generator."""
    h = _row().cuda()
    n = 40000
    gen = torch.Generator("cuda").manual_seed(0)
    out = _draws(h, n, gen).double().cpu()
    keep = _keep(h.cpu())
    se = (keep * (1 - keep) / n).sqrt().clamp_min(1e-4)
    assert (((out != 0).double().mean(0) - keep) / se).abs().max() < 5.0
    sd = (h.cpu().double() * ((1 / keep.clamp_min(1e-300)) - 1).clamp_min(0).sqrt()) / math.sqrt(n)
    z = (out.mean(0) - h.cpu().double()).abs() / sd.clamp_min(1e-9)
    assert z[h.cpu() != 0].max() < 5.0
    a = sap(h[None].expand(8, -1), generator=torch.Generator("cuda").manual_seed(4))
    b = sap(h[None].expand(8, -1), generator=torch.Generator("cuda").manual_seed(4))
    assert torch.equal(a, b)
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    assert sap_module._triton_kernels(h.device) is not None  # not silently the slow fallback


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_sampler_keeps_the_input_dtype_and_its_law(backend, dtype, gen):
    h = _row()
    n = 20000
    out = _draws(h.to(dtype), n, gen)
    assert out.dtype == dtype and torch.isfinite(out).all()
    keep = _keep(h.to(dtype).float())
    se = (keep * (1 - keep) / n).sqrt().clamp_min(1e-4)
    assert (((out != 0).double().mean(0) - keep) / se).abs().max() < 5.0
