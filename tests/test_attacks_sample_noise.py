"""SampleNoise, the per-sample streams of attacks' random starts: batch invariance, sharing between
views, determinism and the law of the numbers, for both kinds of stream: a torch.Generator per
sample (CPU; CUDA without triton) and the counter-based Philox kernel CUDA uses (run here on CPU
tensors by Triton's interpreter; a GPU machine runs the CUDA-only test)."""

import pytest
import torch
from scipy import stats

import robustcompress.attacks.seeds as seeds_module
from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.seeds import SampleNoise


def interpreted_noise_kernels():
    try:
        import triton
        from robustcompress.attacks import _noise_triton
    except ImportError:
        return None
    return _noise_triton if triton.knobs.runtime.interpret else None


@pytest.fixture(params=["generators", "philox"])
def backend(request, monkeypatch):
    if request.param == "philox":
        kernels = interpreted_noise_kernels()
        if kernels is None:
            pytest.skip("needs triton with TRITON_INTERPRET=1 (a GPU machine tests the kernel on CUDA)")
        monkeypatch.setattr(seeds_module, "_noise_kernels", lambda device: kernels)
    return request.param


def _noise(n, seed):
    return SampleNoise(n, torch.Generator().manual_seed(seed), torch.device("cpu"))


def test_split_batches_get_the_noise_of_the_whole_batch(backend):
    x = torch.zeros(10, 3, 4)
    whole = _noise(10, 0)
    a, b = whole.rand(x), whole.randn(x)
    gen = torch.Generator().manual_seed(0)
    first, second = SampleNoise(4, gen, "cpu"), SampleNoise(6, gen, "cpu")
    assert torch.equal(torch.cat([first.rand(x[:4]), second.rand(x[4:])]), a)
    assert torch.equal(torch.cat([first.randn(x[:4]), second.randn(x[4:])]), b)
    assert torch.equal(_noise(10, 0).rand(x), a) and not torch.equal(_noise(10, 1).rand(x), a)


def test_a_view_draws_from_and_advances_its_parents_streams(backend):
    x = torch.zeros(5, 7)
    ref = _noise(5, 3)
    d1, d2 = ref.rand(x), ref.rand(x)
    assert not torch.equal(d1, d2)  # successive draws differ
    noise = _noise(5, 3)
    view = noise.select([3, 1])
    assert torch.equal(view.rand(x[:2]), d1[[3, 1]])
    assert torch.equal(view.select([1]).rand(x[:1]), d2[[1]])  # a view of a view: row 1
    after = noise.rand(x)
    assert torch.equal(after[[0, 2, 4]], d1[[0, 2, 4]]) and torch.equal(after[3], d2[3])
    with pytest.raises(ValueError, match="2 sample streams for a batch of 5"):
        view.rand(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_uniform_and_normal_laws(backend, dtype):
    x = torch.zeros(4, 20000, dtype=dtype)
    noise = _noise(4, 5)
    u, z = noise.rand(x), noise.randn(x)
    assert u.dtype == z.dtype == dtype and u.shape == z.shape == x.shape
    assert u.min() >= 0 and u.max() < 1
    u64, z64 = u.double().flatten(), z.double().flatten()
    if dtype in (torch.float32, torch.float64):
        assert stats.kstest(u64.numpy(), "uniform").pvalue > 1e-4
        assert stats.kstest(z64.numpy(), "norm").pvalue > 1e-4
    else:  # a coarse grid: moments only
        assert abs(u64.mean() - 0.5) < 0.01 and abs(u64.var() - 1 / 12) < 0.01
        assert abs(z64.mean()) < 0.03 and abs(z64.var() - 1) < 0.05
    rows = u.double() - 0.5
    r = (rows[0] * rows[1]).mean() / rows[:2].var(1).prod().sqrt()
    assert abs(r) < 5 / 20000 ** 0.5  # rows uncorrelated
    if dtype == torch.float64:  # more than float32's 24 bits
        assert ((u64 * 2**24).frac() != 0).any()


def test_one_number_per_sample_and_empty_batches(backend):
    noise = _noise(3, 0)
    v = noise.rand_per_sample(torch.zeros(3, 2, 2))
    assert v.shape == (3,) and ((v >= 0) & (v < 1)).all()
    assert _noise(0, 0).rand(torch.zeros(0, 4)).shape == (0, 4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_starts_are_batch_invariant_and_in_the_ball(backend, norm):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x, y = torch.rand(8, 1, 3, 4), torch.randint(0, 3, (8,))
    threat = ThreatModel(norm, 0.2 if norm == "linf" else 0.5, (0.0, 1.0))

    def attack(xs, ys, gen):
        return run_attack("pgd", model, xs, ys, threat, steps=3, early_stop=False, generator=gen).x_adv

    whole = attack(x, y, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    split = torch.cat([attack(x[:3], y[:3], gen), attack(x[3:], y[3:], gen)])
    if norm == "linf":
        assert torch.equal(whole, split)
    else:  # L2 steps scale with the gradient, whose last bit depends on the GEMM's batch size
        assert torch.allclose(whole, split, atol=1e-6, rtol=0)
    assert (threat.norm_of(whole - x) <= threat.eps * (1 + 1e-5)).all()
    assert whole.min() >= 0 and whole.max() <= 1


class AcceleratorGenerator:
    """What SampleNoise reads of a CUDA generator (seed and Philox offset, host-side state), so
    the no-draw, no-sync path for accelerator generators runs on CPU tensors here."""

    device = torch.device("cuda")

    def __init__(self, seed, offset=0):
        self.seed, self.offset = seed, offset

    def initial_seed(self):
        return self.seed

    def get_offset(self):
        return self.offset

    def set_offset(self, offset):
        assert offset % 4 == 0  # what torch's CUDA generator demands
        self.offset = offset


def test_accelerator_generators_give_split_invariant_streams_without_draws(backend):
    if backend != "philox":
        pytest.skip("accelerator generators without triton draw one seed per sample (a GPU test)")
    x = torch.zeros(7, 5)
    gen = AcceleratorGenerator(2**64 - 3, offset=8)
    whole = SampleNoise(7, gen, torch.device("cpu")).randn(x)
    assert gen.offset == 8 + 4 * 7  # advanced as by 7 draws
    gen = AcceleratorGenerator(2**64 - 3, offset=8)
    parts = [SampleNoise(k, gen, torch.device("cpu")).randn(x[:k]) for k in (3, 4)]
    assert torch.equal(torch.cat(parts), whole)
    other = SampleNoise(7, AcceleratorGenerator(5, offset=8), torch.device("cpu")).randn(x)
    assert not torch.equal(other, whole)
    later = SampleNoise(7, AcceleratorGenerator(2**64 - 3, offset=8 + 28), torch.device("cpu")).randn(x)
    assert not torch.equal(later, whole)  # the next call's streams are new ones
    assert len({tuple(r.tolist()) for r in whole}) == 7  # every sample its own stream
    high = SampleNoise(7, AcceleratorGenerator(2**64 - 3, offset=8 + 4 * 2**32), "cpu").randn(x)
    assert not torch.equal(high, whole)  # stream numbers use all 64 bits


def test_an_unusable_kernel_falls_back_to_generators_with_a_warning(monkeypatch):
    kernels = pytest.importorskip("robustcompress.attacks._noise_triton")
    from robustcompress.triton_support import load_kernels

    def broken(*args):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(kernels, "fill", broken)
    with pytest.warns(RuntimeWarning, match="Triton sample noise is unavailable"):
        assert load_kernels.__wrapped__("robustcompress.attacks._noise_triton", "cpu",
                                        seeds_module._warm_up, "sample noise") is None
    assert seeds_module._noise_kernels(torch.device("cpu")) is None  # only CUDA uses the kernel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
def test_cuda_streams_law_batch_invariance_and_kernel():
    x = torch.zeros(6, 30000, device="cuda")
    u = SampleNoise(6, torch.Generator().manual_seed(2), x.device).rand(x)
    assert u.device.type == "cuda" and u.min() >= 0 and u.max() < 1
    assert stats.kstest(u.double().cpu().flatten().numpy(), "uniform").pvalue > 1e-4
    gen = torch.Generator("cuda").manual_seed(2)
    whole = SampleNoise(6, torch.Generator("cuda").manual_seed(2), x.device).randn(x)
    parts = [SampleNoise(k, gen, x.device).randn(x[:k]) for k in (2, 4)]
    assert torch.equal(torch.cat(parts), whole)
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    assert seeds_module._noise_kernels(x.device) is not None  # not silently the slow streams
