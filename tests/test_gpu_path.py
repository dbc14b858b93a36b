"""Speed options of fit (robustcompress.training.accel) on CPU, and the CUDA path when a GPU exists.

* channels_last changes the memory layout only: same weights up to float reassociation;
* amp on CPU is real bfloat16 autocast (documented): weights stay float32, training still works,
  and the numbers differ from float32 (so autocast really ran); float16 uses a GradScaler;
* amp is never applied to objectives that run attacks inside the step (bit-identical to float32);
* torch.compile gives the eager result to float tolerance, or a ConfigError naming the fix.
"""

import warnings

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel
from robustcompress.data import load_dataset
from robustcompress.errors import ConfigError
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit
from robustcompress.training import accel
from robustcompress.training.objectives import fgsm_training

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")

BASE = dict(epochs=1, batch_size=64, lr=3e-3, seed=3, max_batches_per_epoch=6)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_limit=400, test_limit=200)


def _train(data, model_name="lenet5", objective=None, device="cpu", **opts):
    torch.manual_seed(0)
    m = build_model(model_name, data.info)
    return fit(m, data, TrainConfig(**{**BASE, **opts}), objective=objective, device=device,
               progress=False)


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_channels_last_gives_the_same_weights_and_returns_contiguous_tensors(digits, tmp_path):
    ref = _train(digits)
    cl = _train(digits, channels_last=True)
    assert _max_diff(ref.model, cl.model) < 1e-4
    assert all(p.is_contiguous() for p in cl.model.parameters())
    from robustcompress.training import save_checkpoint

    save_checkpoint(cl.model, tmp_path / "m", {})  # safetensors needs ordinary tensors


def test_batch_to_uses_nhwc_for_images_only():
    x4 = torch.rand(2, 3, 4, 4)
    y = accel.batch_to(x4, torch.device("cpu"), channels_last=True)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, x4)
    x3 = torch.rand(2, 1, 16)
    assert accel.batch_to(x3, torch.device("cpu"), channels_last=True).is_contiguous()


def test_amp_on_cpu_is_bfloat16_autocast_and_still_trains(digits):
    ref = _train(digits)
    amp = _train(digits, amp=True)
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())
    d = _max_diff(ref.model, amp.model)
    assert 0 < d < 0.05  # autocast really ran, and stayed close to float32
    assert amp.history[0]["loss"] < 2.2  # below ln(10) = 2.30: it learns
    assert abs(amp.metrics["test_acc"] - ref.metrics["test_acc"]) < 0.15


def test_amp_float16_uses_a_grad_scaler(digits):
    assert accel.make_scaler(True, torch.device("cpu"), torch.float16) is not None
    assert accel.make_scaler(True, torch.device("cpu"), torch.bfloat16) is None
    res = _train(digits, amp=True, amp_dtype="float16")
    assert res.history[0]["loss"] < 2.25 and all(torch.isfinite(p).all()
                                                 for p in res.model.parameters())


def test_amp_is_not_applied_to_objectives_that_run_attacks(digits):
    threat = ThreatModel.from_spec(norm="linf", eps=0.1, info=digits.info)

    def run(**o):
        return _train(digits, objective=fgsm_training(threat), max_batches_per_epoch=2, **o)

    ref = run()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        amp = run(amp=True)
    assert any("float32" in str(x.message) for x in w)
    assert _max_diff(ref.model, amp.model) == 0.0


def test_execution_options_may_change_when_resuming(digits, tmp_path):
    torch.manual_seed(0)
    m = build_model("lenet300", digits.info)
    fit(m, digits, TrainConfig(**{**BASE, "epochs": 1}), checkpoint_dir=tmp_path, progress=False)
    res = fit(m, digits, TrainConfig(**{**BASE, "epochs": 2, "amp": True, "channels_last": True}),
              checkpoint_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_compile_matches_eager_or_explains_the_toolchain(digits):
    def run(compile_):
        torch.manual_seed(0)
        m = Tiny()
        cfg = TrainConfig(**{**BASE, "max_batches_per_epoch": 2, "compile": compile_})
        return fit(m, digits, cfg, progress=False)

    eager = run(False)
    try:
        comp = run(True)
    except ConfigError as e:
        assert "compile=False" in str(e)
        pytest.skip(f"torch.compile unavailable on this toolchain: {e}")
    assert _max_diff(eager.model, comp.model) < 1e-5
    assert abs(eager.metrics["loss"] - comp.metrics["loss"]) < 1e-5


def test_compile_error_message_names_the_fix():
    e = accel.compile_error(RuntimeError("InvalidCxxCompiler: No working C++ compiler found"))
    assert isinstance(e, ConfigError) and "compile=False" in str(e) and "C++" in str(e)


@cuda
def test_cuda_training_with_amp_channels_last_and_pinned_batches(digits):
    ref = _train(digits, device="cpu")
    res = _train(digits, device="cuda", amp=True, channels_last=True)
    assert next(res.model.parameters()).device.type == "cuda"
    assert abs(res.metrics["test_acc"] - ref.metrics["test_acc"]) < 0.15


@cuda
def test_cuda_batch_copy_through_pinned_memory_is_exact():
    x = torch.rand(4, 1, 8, 8)
    y = accel.batch_to(x, torch.device("cuda"), channels_last=False)
    assert y.device.type == "cuda" and torch.equal(y.cpu(), x)


def test_deterministic_kernels_set_cudnn_for_cuda_only_and_restore_the_flags():
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True  # a user's own choice
        with accel.deterministic_kernels(torch.device("cuda")):  # flags only: no GPU needed
            assert cudnn.deterministic and not cudnn.benchmark
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        for device, on in (("cpu", True), ("cuda", False)):
            with accel.deterministic_kernels(device, on):
                assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        with pytest.raises(RuntimeError), accel.deterministic_kernels("cuda"):
            raise RuntimeError("a failing step")
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = saved
    assert TrainConfig().deterministic is True


@cuda
def test_cuda_fit_is_deterministic_by_default_and_reproduces_a_seed(digits):
    seen = []

    def objective(model, x, y):
        seen.append(torch.backends.cudnn.deterministic)
        return nn.functional.cross_entropy(model(x), y)

    before = torch.backends.cudnn.deterministic
    a = _train(digits, device="cuda", objective=objective)
    b = _train(digits, device="cuda")
    assert seen and all(seen) and torch.backends.cudnn.deterministic == before
    assert _max_diff(a.model, b.model) == 0.0  # same seed, same weights, on a GPU too
