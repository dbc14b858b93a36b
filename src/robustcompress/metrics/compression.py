"""How small and fast a model really is: parameters, non-zeros, bits, bytes on disk, MACs, latency.

"Savings are real or not claimed" (DESIGN.md): a mask over a dense weight saves nothing until the
model is exported compactly, so

* :func:`exported_bytes` is the size of a safetensors file holding, for every module that
  implements ``export_tensors()`` (packed quantised codes, sparse indices + values, Tucker
  factors, ...), those tensors, and every other parameter / floating buffer as dense float32;
* :func:`count_macs` counts multiply-accumulates of the ``nn.Conv1d`` / ``nn.Conv2d`` /
  ``nn.Linear`` modules that actually *execute* in a forward pass (forward hooks). Functional
  ops (``F.conv2d`` called inside a custom module, attention, element-wise ops, pooling,
  BatchNorm, the option-A shortcut's padding) are NOT counted: a factorised layer only shows
  smaller MACs if it runs smaller conv modules;
* :func:`measure_latency` is a measured median, not an estimate.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import save_file
from torch import nn

from robustcompress.data.info import DatasetInfo

MAC_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_tensors(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Per module: its effective ``weight`` (masks / quantisers applied) and ``bias`` when it has
    a tensor ``weight``; otherwise its own direct parameters. Parametrization internals skipped."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            ts = [w]
            b = getattr(m, "bias", None)
            if isinstance(b, torch.Tensor):
                ts.append(b)
            out[name] = ts
        else:
            own = [p for _, p in m.named_parameters(recurse=False)]
            if own:
                out[name] = own
    return out


@torch.no_grad()
def count_nonzeros(model: nn.Module) -> dict:
    """Non-zero entries of the effective weights, per layer and in total.

    Returns ``{"layers": {name: {"nonzero", "total"}}, "nonzero", "total", "density"}``; a layer
    is a module with a tensor ``weight`` (its weight and bias, after masks) or, for other modules,
    their own parameters.
    """
    layers = {}
    nz = tot = 0
    for name, ts in _layer_tensors(model).items():
        a = sum(int(torch.count_nonzero(t.detach())) for t in ts)
        b = sum(t.numel() for t in ts)
        layers[name] = {"nonzero": a, "total": b}
        nz, tot = nz + a, tot + b
    return {"layers": layers, "nonzero": nz, "total": tot, "density": nz / tot if tot else 0.0}


def effective_bits(model: nn.Module) -> dict:
    """Bits per weight: a layer's ``weight_bits`` attribute if it declares one, else 32.

    Returns ``{"layers": {name: bits}, "mean_bits"}`` (mean weighted by the weight's size).
    """
    layers, num, den = {}, 0.0, 0
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or "parametrizations" in name.split("."):
            continue
        bits = float(getattr(m, "weight_bits", None) or 32)
        layers[name] = bits
        num, den = num + bits * w.numel(), den + w.numel()
    return {"layers": layers, "mean_bits": num / den if den else 0.0}


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors :func:`exported_bytes` stores (see module doc)."""
    out: dict[str, torch.Tensor] = {}
    covered: set[str] = set()
    for name, m in model.named_modules():
        if callable(getattr(m, "export_tensors", None)):
            prefix = f"{name}." if name else ""
            for k, t in m.export_tensors().items():
                out[f"{prefix}{k}"] = t.detach()
            covered.update(f"{prefix}{n}" for n, _ in m.named_parameters(recurse=False))
            covered.update(f"{prefix}{n}" for n, _ in m.named_buffers(recurse=False))
            covered.add(f"{prefix}parametrizations.")
    for k, t in model.state_dict().items():
        if k in covered or any(k.startswith(c) for c in covered if c.endswith(".")):
            continue
        if t.is_floating_point():
            out[k] = t.detach().to(torch.float32)
    return out


def exported_bytes(model: nn.Module) -> int:
    """Bytes of a safetensors file of :func:`export_state` (written to a temp file and stat'ed;
    includes the file header, so a dense model is slightly more than 4 bytes per parameter)."""
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in export_state(model).items()}
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, path)
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def _as_batch_shape(input_shape: Sequence[int], batch_size: int) -> tuple[int, ...]:
    return (batch_size, *[int(s) for s in input_shape])


@torch.no_grad()
def macs_per_layer(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of one input of shape ``input_shape`` (no batch dim) per executed conv/linear module.

    conv: ``output elements x in_channels/groups x prod(kernel)``; linear: ``output elements x
    in_features``. Bias additions are not counted. Runs in eval mode (restored afterwards).
    A module executed twice is counted twice.
    """
    counts: dict[str, int] = {}
    handles = []

    def hook(name):
        def f(m, inp, out):
            if hasattr(m, "macs_per_output"):  # op modules declare the size of what they ran
                per_out = m.macs_per_output
            elif isinstance(m, nn.Linear):
                per_out = m.in_features
            else:
                per_out = m.in_channels // m.groups * int(torch.tensor(m.kernel_size).prod())
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[0] * per_out
        return f

    for name, m in model.named_modules():
        if isinstance(m, MAC_MODULES) or hasattr(m, "macs_per_output"):
            handles.append(m.register_forward_hook(hook(name)))
    was = model.training
    model.eval()
    try:
        dev = next(iter(model.parameters()), torch.zeros(0)).device
        model(torch.zeros(_as_batch_shape(input_shape, 1), device=dev))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return counts


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Total MACs of one forward pass on one input (see :func:`macs_per_layer`)."""
    return sum(macs_per_layer(model, input_shape).values())


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                    repeats: int = 20, device: Union[str, torch.device, None] = None,
                    warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one forward pass on a batch (eval mode, no grad)."""
    dev = torch.device(device) if device is not None else next(
        iter(model.parameters()), torch.zeros(0)).device
    x = torch.rand(_as_batch_shape(input_shape, batch_size), device=dev)
    was = model.training
    model.eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was)
    return statistics.median(times)


def compression_report(model: nn.Module, info: DatasetInfo, *, latency: bool = True,
                       repeats: int = 10, reference: Optional[nn.Module] = None) -> dict:
    """One row of compression figures for ``model`` on inputs of ``info.shape``.

    Keys: params, nonzero, density, mean_bits, exported_bytes, dense_bytes (4 x params),
    size_ratio (dense_bytes / exported_bytes), macs, latency_ms (batch 1, CPU threads as set),
    and, with ``reference`` (e.g. the uncompressed model), ``macs_ratio`` and ``bytes_ratio``
    relative to it.
    """
    params = count_parameters(model)
    nz = count_nonzeros(model)
    nbytes = exported_bytes(model)
    row = {
        "params": params,
        "nonzero": nz["nonzero"],
        "density": nz["density"],
        "mean_bits": effective_bits(model)["mean_bits"],
        "exported_bytes": nbytes,
        "dense_bytes": 4 * params,
        "size_ratio": 4 * params / nbytes if nbytes else float("nan"),
        "macs": count_macs(model, info.shape),
    }
    if latency:
        row["latency_ms"] = measure_latency(model, info.shape, repeats=repeats)
    if reference is not None:
        row["bytes_ratio"] = exported_bytes(reference) / nbytes if nbytes else float("nan")
        ref_macs = count_macs(reference, info.shape)
        row["macs_ratio"] = ref_macs / row["macs"] if row["macs"] else float("nan")
    return row
