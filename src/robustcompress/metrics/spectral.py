"""Spectral norm of the weight quantisation error ``||dW||_2`` per layer (Song et al., AAAI-21 RSEML).

Song, Fallon & Li measure ``||dW||_2 = sup_{||z||_2 = 1} ||dW z||_2`` with ``dW = W_q - W`` for each
layer; a value above 1 means the quantisation error can be amplified by that layer.  For a
convolution the paper does not say which operator is meant, so both are offered and labelled:

``reshaped``  the largest singular value of the kernel reshaped to ``O x (I k k)``
              (``torch.linalg.matrix_norm(ord=2)``): cheap, input-size independent, *not* the
              operator norm of the convolution;
``operator``  the operator norm of the linear map ``x -> conv(x, dW)`` on inputs of a given size,
              by power iteration with ``conv`` and its adjoint ``conv_transpose`` (same stride,
              padding, dilation, groups).
For a linear layer both coincide.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError


def reshaped_spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value of ``w`` reshaped to ``[out, -1]``."""
    return float(torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1).double(), ord=2))


def _conv_fns(dim: int):
    if dim == 1:
        return F.conv1d, F.conv_transpose1d
    if dim == 2:
        return F.conv2d, F.conv_transpose2d
    raise UserInputError(f"only 1-D and 2-D convolutions are supported, got {dim}-D")


def conv_operator_norm(w: torch.Tensor, input_shape: Sequence[int], *, stride=1, padding=0,
                       dilation=1, groups: int = 1, iters: int = 100, tol: float = 1e-7,
                       generator: Optional[torch.Generator] = None) -> float:
    """Operator 2-norm of ``x -> conv(x, w)`` for inputs of shape ``input_shape = (C, *spatial)``.

    Power iteration on ``A^T A`` with ``A = conv`` and ``A^T = conv_transpose`` (the adjoint,
    with ``output_padding`` chosen so it returns ``input_shape``).  Converges to the largest
    singular value from below; ``tol`` is the relative change that stops it early.
    """
    w = w.detach().double()
    dim = w.dim() - 2
    conv, conv_t = _conv_fns(dim)
    x = torch.randn((1, *input_shape), generator=generator, dtype=torch.float64).to(w.device)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = conv(x, w, **kw)
    # output_padding so conv_transpose maps back onto exactly input_shape
    st = (stride,) * dim if isinstance(stride, int) else tuple(stride)
    pd = (padding,) * dim if isinstance(padding, int) else tuple(padding)
    dl = (dilation,) * dim if isinstance(dilation, int) else tuple(dilation)
    ks = w.shape[2:]
    op = tuple(int(input_shape[1 + i]) - ((y.shape[2 + i] - 1) * st[i] - 2 * pd[i]
                                          + dl[i] * (ks[i] - 1) + 1) for i in range(dim))
    sigma = 0.0
    if not bool(w.any()):  # zero operator (e.g. an unquantised layer's error): norm 0, not 0/0
        return 0.0
    for _ in range(iters):
        x = x / x.norm()
        y = conv(x, w, **kw)
        new = float(y.norm())
        x = conv_t(y, w, output_padding=op, **kw)
        if sigma > 0 and abs(new - sigma) <= tol * sigma:
            sigma = new
            break
        sigma = new
    return sigma


def layer_input_shapes(model: nn.Module, input_shape: Sequence[int],
                       layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of each named layer, from one forward pass on zeros."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(_m, inp, _out) -> None:
            shapes.setdefault(name, tuple(inp[0].shape[1:]))
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in layers]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def quantization_error_norms(model: nn.Module, reference: nn.Module,
                             input_shape: Optional[Sequence[int]] = None, *,
                             iters: int = 100,
                             generator: Optional[torch.Generator] = None) -> list[dict]:
    """``||W_model - W_reference||_2`` for every Linear/Conv layer present in both models.

    Returns one row per layer: ``layer``, ``kind``, ``reshaped`` (reshaped-matrix norm) and
    ``operator`` (true conv operator norm at the layer's input size when ``input_shape`` -- one
    input sample's shape -- is given, else None; equals ``reshaped`` for linear layers), plus
    ``weight_norm`` (``||W||_2`` reshaped) for scale.
    """
    ref = dict(reference.named_modules())
    names = [n for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and n in ref]
    shapes = layer_input_shapes(model, input_shape, names) if input_shape is not None else {}
    rows = []
    for n in names:
        m = model.get_submodule(n)
        dw = (m.weight - ref[n].weight).detach()
        r = reshaped_spectral_norm(dw)
        if isinstance(m, nn.Linear):
            op: Optional[float] = r
        elif n in shapes:
            op = conv_operator_norm(dw, shapes[n], stride=m.stride, padding=m.padding,
                                    dilation=m.dilation, groups=m.groups, iters=iters,
                                    generator=generator)
        else:
            op = None
        rows.append({"layer": n, "kind": type(m).__name__.replace("Parametrized", ""),
                     "reshaped": r, "operator": op,
                     "weight_norm": reshaped_spectral_norm(ref[n].weight)})
    return rows


def plot_error_norms(rows_by_model: dict[str, list[dict]], path, key: str = "reshaped",
                     title: Optional[str] = None) -> None:
    """Grouped bar plot of ``||dW||_2`` per layer, one bar group per model (the paper's figure).

    ``key`` is ``"reshaped"`` or ``"operator"``; the y label says which norm is shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["layer"] for r in next(iter(rows_by_model.values()))]
    width = 0.8 / max(len(rows_by_model), 1)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(labels) + 2), 3.2))
    for i, (name, rows) in enumerate(rows_by_model.items()):
        vals = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.bar([j + i * width for j in range(len(vals))], vals, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(f"||dW||_2 ({key})")
    ax.set_title(title or "Spectral norm of the weight quantisation error per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
