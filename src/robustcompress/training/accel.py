"""Speed options of :func:`robustcompress.training.fit`: mixed precision, channels_last,
torch.compile, pinned host memory. Each is opt-in through :class:`TrainConfig` and changes
only how the training step is executed, never what is optimised.

* ``amp``: the training forward/loss run under ``torch.autocast``. dtype ``amp_dtype="auto"``:
  bfloat16 on CPU and on GPUs that support it, float16 otherwise. float16 uses a gradient
  scaler (``torch.amp.GradScaler``; steps with inf/NaN gradients are skipped and the scale
  lowered); bfloat16 needs none. On CPU, bfloat16 autocast is real (not a no-op): it is
  numerically close to float32 but usually not faster on CPUs without bf16 units, so it is
  mainly useful for testing the GPU path. Attacks are never run under autocast: AMP is applied
  only to objectives that declare ``amp_safe = True`` (the default cross-entropy); objectives
  that craft adversarial examples inside the step (their input gradients must be float32)
  train in float32 with a one-line note.
* ``channels_last``: 4-D conv weights and 4-D input batches use the NHWC memory format during
  training (same numbers up to float reassociation); the model is returned in the default
  (contiguous) format so that checkpoints and later code see ordinary tensors.
* ``compile``: the objective receives ``torch.compile(model)`` (parameters are shared, so the
  optimizer and checkpoints are unchanged); evaluation uses the plain model. A toolchain that
  cannot compile (no C++ compiler for the CPU backend, unsupported Python) raises a
  :class:`~robustcompress.errors.ConfigError` that says to turn ``compile`` off.
* ``deterministic`` (on by default, unlike the others): on CUDA, cuDNN is restricted to
  deterministic algorithms (``cudnn.deterministic = True``, ``benchmark = False``) while ``fit``
  runs, and restored afterwards, so that a seed reproduces a run and a resumed run equals an
  uninterrupted one on a GPU as on a CPU; ``False`` lets cuDNN pick faster, non-deterministic
  kernels. No effect on CPU (its kernels are deterministic).
* pinned memory: on CUDA every batch read from the host is copied into page-locked host memory
  and sent with ``non_blocking=True``; on CPU nothing changes. A training split resident on the
  device (``data_on_device``, :mod:`robustcompress.training.resident`) sends only the epoch's
  permutation and each batch's augmentation draws.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from robustcompress.errors import ConfigError


def amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``name`` (``auto | bfloat16 | float16``) on ``device``."""
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(enabled: bool, device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` on ``device``'s type, or a null context when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(enabled: bool, device: torch.device, dtype: torch.dtype):
    """A ``GradScaler`` for float16 autocast; None for bfloat16 or no AMP."""
    if not enabled or dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def objective_allows_amp(objective) -> bool:
    """True for objectives that declare ``amp_safe = True`` (cross-entropy: no attack inside)."""
    from robustcompress.training.objectives import CrossEntropy

    return bool(getattr(objective, "amp_safe", isinstance(objective, CrossEntropy)))


def to_channels_last(model: nn.Module) -> None:
    """NHWC memory format for the 4-D parameters/buffers of ``model`` (in place)."""
    model.to(memory_format=torch.channels_last)


def to_contiguous(model: nn.Module) -> None:
    """Back to the default memory format (in place; parameter objects are kept)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if not t.is_contiguous():
                t.data = t.data.contiguous()


def batch_to(x: torch.Tensor, device: torch.device, *, channels_last: bool) -> torch.Tensor:
    """Copy a host batch to ``device``: pinned + non_blocking on CUDA, NHWC for 4-D inputs when
    ``channels_last``."""
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (compilation itself happens at the first call;
    see :func:`compile_error`)."""
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # e.g. unsupported Python version
        raise compile_error(e) from e


def compile_error(e: BaseException) -> ConfigError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return ConfigError(f"torch.compile failed on this toolchain ({type(e).__name__}: {first}); "
                       "train without it (compile=False / drop --compile), or install a C++ "
                       "compiler for the CPU backend")


def is_compile_failure(e: BaseException) -> bool:
    """Whether ``e`` comes from torch's compiler stack (dynamo/inductor), not from the model."""
    mod = type(e).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" in \
        type(e).__name__


def describe(config, device: torch.device, objective) -> Optional[str]:
    """A one-line note when an asked option is ignored (None when everything applies)."""
    if config.amp and not objective_allows_amp(objective):
        return (f"amp: {objective!r} runs attacks inside the training step, which stay in "
                "float32; this run trains in float32")
    return None


@contextlib.contextmanager
def deterministic_kernels(device, on: bool = True):
    """Inside, cuDNN uses deterministic algorithms only when ``device`` is CUDA and ``on``; the
    previous flags are restored on exit (a no-op on CPU, whose kernels are deterministic)."""
    if not on or torch.device(device).type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved
