"""Tucker-factorized convolution and linear layers (functional core + thin modules).

A weight ``W`` of shape ``(O, I, k_1, ..., k_d)`` (conv) or ``(O, I)`` (linear) is stored as a core
``G`` of shape ``(R_O, R_I, r_1, ..., r_d)`` and one factor matrix per mode, ``U_n`` of shape
``(dim_n, R_n)``::

    W = G x_0 U_O x_1 U_I x_2 U_1 ... x_{d+1} U_d                 (Kolda & Bader 2009)

This is the latent parametrisation of Defensive Tensorization (Bulat et al., BMVC 2021, Sec. 3).

Execution
---------
``"factorized"`` (default) runs the Tucker-2 form used by tensorly-torch's ``tucker_conv`` and by
Kim et al. (ICLR 2016): a 1x1 conv ``I -> R_I`` with ``U_I``, the core conv ``R_O x R_I x k...``
with the spatial factors folded into the core, and a 1x1 conv ``R_O -> O`` with ``U_O`` plus the
bias. It costs ``HW*I*R_I + H'W'*R_O*R_I*k^d + H'W'*O*R_O`` MACs instead of ``H'W'*O*I*k^d``, so
low channel ranks save real compute; spatial ranks save parameters only (they are folded before the
conv). ``"reconstructed"`` rebuilds the dense kernel on every forward and runs one conv: it is never
faster than the dense layer (it saves storage only), but it is what the binary (XNOR) variant
needs, since ``sign`` acts on the reconstructed weight.

Ranks
-----
Per mode, an ``int`` (absolute) or a ``float`` in (0, 1] (a fraction *of that mode's dimension*,
rounded, at least 1), or ``None`` (full). This deliberately differs from tensorly-torch, whose float
rank is a fraction of the *parameter count* and silently shrinks the 3x3 spatial modes. Spatial
modes are kept full unless a rank is given for them explicitly. Every rank is clamped to a valid
Tucker rank, ``R_n <= min(dim_n, prod_{m != n} R_m)`` (tensorly-torch 0.5 builds a core of the
wrong shape for ``rank > dim`` and returns outputs off by an order of magnitude; we clamp).

Initialisation from a pretrained weight: truncated HOSVD (SVD of each mode unfolding, De Lathauwer
et al. 2000) or HOOI (alternating refinement of the HOSVD, a few sweeps), both with
``torch.linalg.svd``; tensorly is not required.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.counted import (
    CONV_FNS,
    ConvOp,
    LinearOp,
    batched_conv,
    batched_linear,
    pad_arg,
)
from robustcompress.nn.sketch import check_sketch_args, sample_core_masks, sketch_tucker
from robustcompress.nn.xnor import input_norm, xnor_conv, xnor_linear

from robustcompress.nn.tucker_algebra import (  # noqa: F401,E402  (re-exported)
    RankSpec,
    clamp_ranks,
    hooi,
    hosvd,
    mode_dot,
    random_tucker,
    resolve_ranks,
    tucker_to_tensor,
    unfold,
)


def fold_spatial(core: torch.Tensor, factors: Sequence[torch.Tensor], *, batch_dims: int = 0
                 ) -> torch.Tensor:
    """Fold the spatial factors (modes 2..) into the core: ``(R_O, R_I, k_1, ..., k_d)``."""
    out = core
    for mode in range(2, core.dim() - batch_dims):
        out = mode_dot(out, factors[mode], mode + batch_dims)
    return out


def tucker_conv(x: torch.Tensor, core: torch.Tensor, factors: Sequence[torch.Tensor],
                bias: Optional[torch.Tensor] = None, *, stride=1, padding=0, dilation=1,
                ndim: int = 2, execution: str = "factorized", conv: Optional[Callable] = None
                ) -> torch.Tensor:
    """Convolution with a Tucker-factorized kernel (1-D or 2-D; ``groups=1``).

    Parameters
    ----------
    x : ``(B, I, L)`` or ``(B, I, H, W)``.
    core : ``(R_O, R_I, r_1, ..., r_ndim)``.
    factors : ``[U_O (O, R_O), U_I (I, R_I), U_1 (k_1, r_1), ...]``.
    bias : ``(O,)`` or None.
    stride, padding, dilation : as in :func:`torch.nn.functional.conv2d`; applied by the core
        conv (the 1x1 convs commute with zero padding: a pointwise linear map sends 0 to 0).
    execution : ``"factorized"`` (1x1 -> core conv -> 1x1, real MAC savings) or
        ``"reconstructed"`` (one dense conv with ``tucker_to_tensor``).
    conv : the conv function to call (``F.conv{ndim}d`` signature); modules pass a hookable
        :mod:`~robustcompress.nn.counted` op so MAC counters see the executed convs.

    Returns
    -------
    ``(B, O, ...)``, equal (up to float rounding) to the dense conv with the reconstructed kernel.
    """
    if ndim not in CONV_FNS:
        raise UserInputError(f"tucker_conv supports ndim 1 or 2, got {ndim}")
    conv = conv or CONV_FNS[ndim]
    padding = pad_arg(padding, ndim)
    if execution == "reconstructed":
        return conv(x, tucker_to_tensor(core, factors), bias, stride, padding, dilation)
    if execution != "factorized":
        raise UserInputError(
            f"unknown execution {execution!r}; choose 'factorized' or 'reconstructed'")
    u_out, u_in = factors[0], factors[1]
    ones = (1,) * ndim
    h = conv(x, u_in.T.reshape(u_in.shape[1], u_in.shape[0], *ones))
    h = conv(h, fold_spatial(core, factors), None, stride, padding, dilation)
    return conv(h, u_out.reshape(u_out.shape[0], u_out.shape[1], *ones), bias)


def tucker_linear(x: torch.Tensor, core: torch.Tensor, factors: Sequence[torch.Tensor],
                  bias: Optional[torch.Tensor] = None, *, execution: str = "factorized",
                  linear: Optional[Callable] = None) -> torch.Tensor:
    """``x W^T + b`` with ``W = U_O G U_I^T`` (``core (R_O, R_I)``); ``x`` is ``(..., I)``.

    Factorized: three thin matmuls, ``I*R_I + R_I*R_O + R_O*O`` MACs per row instead of ``I*O``.
    """
    linear = linear or F.linear
    if execution == "reconstructed":
        return linear(x, tucker_to_tensor(core, factors), bias)
    if execution != "factorized":
        raise UserInputError(
            f"unknown execution {execution!r}; choose 'factorized' or 'reconstructed'")
    u_out, u_in = factors
    return linear(linear(linear(x, u_in.T), core), u_out, bias)


def tucker_conv_per_sample(x: torch.Tensor, cores: torch.Tensor,
                           factors: Sequence[torch.Tensor], bias: Optional[torch.Tensor] = None,
                           *, stride=1, padding=0, dilation=1, ndim: int = 2,
                           conv: Optional[Callable] = None) -> torch.Tensor:
    """:func:`tucker_conv` with one core per sample (``cores`` is ``(B, R_O, R_I, r...)``).

    Factorized: the two 1x1 convs are shared, the core conv is a grouped conv with one group per
    sample (:func:`batched_conv`). Used by the ``"sample"`` sketch granularity.
    """
    u_out, u_in = factors[0], factors[1]
    conv = conv or CONV_FNS[ndim]
    ones = (1,) * ndim
    h = conv(x, u_in.T.reshape(u_in.shape[1], u_in.shape[0], *ones))
    h = batched_conv(h, fold_spatial(cores, factors, batch_dims=1), stride=stride,
                     padding=padding, dilation=dilation, ndim=ndim, conv=conv)
    return conv(h, u_out.reshape(u_out.shape[0], u_out.shape[1], *ones), bias)


def tucker_linear_per_sample(x: torch.Tensor, cores: torch.Tensor,
                             factors: Sequence[torch.Tensor], bias: Optional[torch.Tensor] = None,
                             *, linear: Optional[Callable] = None,
                             conv: Optional[Callable] = None) -> torch.Tensor:
    """:func:`tucker_linear` with one core ``(R_O, R_I)`` per sample; ``x`` is ``(B, ..., I)``."""
    linear = linear or F.linear
    u_out, u_in = factors
    h = batched_linear(linear(x, u_in.T), cores, conv=conv)
    return linear(h, u_out, bias)


# ----------------------------------------------------------------------------- modules

class TuckerBase(nn.Module):
    """Shared state of the Tucker modules: core, factors, bias and the rank sketch settings.

    Randomness protocol (:mod:`robustcompress.nn.protocol`): ``stochastic`` is True iff the
    sketch is enabled and ``theta < 1``; setting ``stochastic = False`` (as
    :func:`~robustcompress.nn.protocol.freeze_noise` does) disables the sketch, giving the
    deterministic theta=1 model; ``generator`` and ``granularity`` are read at every forward.
    ``non_differentiable`` / ``surrogate`` are set when ``binary`` (XNOR) is on.
    """

    ndim: int = 0

    def __init__(self, shape: Sequence[int], ranks: Sequence[int], *, bias: bool,
                 theta: float = 1.0, sketch_modes: Optional[Sequence[int]] = None,
                 rescale: str = "unbiased", granularity: str = "batch",
                 execution: str = "factorized", binary: bool = False,
                 generator: Optional[torch.Generator] = None,
                 init_std: float = 0.02, init_generator: Optional[torch.Generator] = None):
        super().__init__()
        self.weight_shape = tuple(int(s) for s in shape)
        self.ranks = clamp_ranks(ranks, self.weight_shape)
        core, factors = random_tucker(self.weight_shape, self.ranks, std=init_std,
                                      generator=init_generator)
        self.core = nn.Parameter(core)
        self.factors = nn.ParameterList([nn.Parameter(u) for u in factors])
        self.bias = nn.Parameter(torch.zeros(self.weight_shape[0])) if bias else None
        self.sketch_modes = tuple(sketch_modes if sketch_modes is not None else (0, 1))
        check_sketch_args(theta, self.sketch_modes, len(self.weight_shape), rescale, granularity)
        if execution not in ("factorized", "reconstructed"):
            raise UserInputError(
                f"unknown execution {execution!r}; choose 'factorized' or 'reconstructed'")
        self.theta = float(theta)
        self.rescale = rescale
        self.granularity = granularity
        self.execution = execution
        self.generator = generator
        self.sketch_enabled = True
        self.binary = bool(binary)
        self.surrogate = "clipped"
        # XNOR-Net's BatchNorm before sign (see robustcompress.nn.xnor); binary layers only.
        self.input_norm = input_norm(self.weight_shape[1], self.ndim) if self.binary else None

    # -- protocol ---------------------------------------------------------------------------
    @property
    def stochastic(self) -> bool:
        return self.sketch_enabled and self.theta < 1.0

    @stochastic.setter
    def stochastic(self, value: bool) -> None:
        self.sketch_enabled = bool(value)

    @property
    def non_differentiable(self) -> bool:
        return self.binary

    # -- weights ----------------------------------------------------------------------------
    def set_tucker(self, core: torch.Tensor, factors: Sequence[torch.Tensor]) -> None:
        """Overwrite core and factors (shapes must match the module's ranks)."""
        with torch.no_grad():
            self.core.copy_(core)
            for p, u in zip(self.factors, factors):
                p.copy_(u)

    def dense_weight(self) -> torch.Tensor:
        """The unsketched reconstructed weight ``G x_n U_n``."""
        return tucker_to_tensor(self.core, list(self.factors))

    def sketched_weight(self) -> torch.Tensor:
        """One random draw of the reconstructed sketched weight ``W~`` (eq. 4)."""
        core, factors = sketch_tucker(self.core, list(self.factors), self.theta,
                                      self.sketch_modes, rescale=self.rescale,
                                      generator=self.generator)
        return tucker_to_tensor(core, factors)

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Compact storage: core and factors (the dense kernel is never stored)."""
        out = {"core": self.core.detach()}
        # same keys as the state dict, so the compression metric stores each tensor once
        out.update({f"factors.{n}": u.detach() for n, u in enumerate(self.factors)})
        if self.bias is not None:
            out["bias"] = self.bias.detach()
        return out

    def extra_repr(self) -> str:
        return (f"shape={self.weight_shape}, ranks={self.ranks}, theta={self.theta}, "
                f"sketch_modes={self.sketch_modes}, rescale={self.rescale!r}, "
                f"granularity={self.granularity!r}, execution={self.execution!r}, "
                f"binary={self.binary}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            x = (self.input_norm(x) if x.dim() == 2 or self.ndim > 0 else
                 self.input_norm(x.reshape(-1, x.shape[-1])).reshape(x.shape))
        factors = list(self.factors)
        if not self.stochastic:
            return self._run(x, self.core, factors)
        if self.granularity == "batch":
            core, factors = sketch_tucker(self.core, factors, self.theta, self.sketch_modes,
                                          rescale=self.rescale, generator=self.generator)
            return self._run(x, core, factors)
        cores = self.core * sample_core_masks(self.core, self.theta, self.sketch_modes,
                                              x.shape[0], rescale=self.rescale,
                                              generator=self.generator)
        return self._run_per_sample(x, cores, factors)

    def _run(self, x, core, factors):  # pragma: no cover - overridden
        raise NotImplementedError

    def _run_per_sample(self, x, cores, factors):  # pragma: no cover - overridden
        raise NotImplementedError


class _TuckerConvNd(TuckerBase):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: RankSpec = 1.0, *,
                 stride=1, padding=0, dilation=1, bias: bool = True, **kw):
        ks = (kernel_size,) * self.ndim if isinstance(kernel_size, int) else tuple(kernel_size)
        shape = (out_channels, in_channels, *ks)
        ranks = resolve_ranks(rank, shape, fixed_modes=tuple(range(2, 2 + self.ndim)))
        fan_in = in_channels * math.prod(ks)
        kw.setdefault("init_std", 1.0 / math.sqrt(3 * fan_in))  # nn.Conv's kaiming_uniform(a=5)
        super().__init__(shape, ranks, bias=bias, **kw)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ks
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.op = ConvOp(self.ndim)  # runs every conv, visible to MAC-counting hooks

    def _conv_kw(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    ndim=self.ndim, conv=self.op)

    def _run(self, x, core, factors):
        if self.binary:
            return xnor_conv(x, tucker_to_tensor(core, factors), self.bias,
                             surrogate=self.surrogate, **self._conv_kw())
        return tucker_conv(x, core, factors, self.bias, execution=self.execution,
                           **self._conv_kw())

    def _run_per_sample(self, x, cores, factors):
        if self.binary:
            return xnor_conv(x, tucker_to_tensor(cores, factors, batch_dims=1), self.bias,
                             surrogate=self.surrogate, per_sample=True, **self._conv_kw())
        return tucker_conv_per_sample(x, cores, factors, self.bias, **self._conv_kw())

    @classmethod
    def from_conv(cls, conv: nn.Module, rank: RankSpec = 1.0, *, init: str = "hosvd",
                  n_iter: int = 5, init_generator: Optional[torch.Generator] = None, **kw):
        """Tucker layer initialised from a pretrained ``nn.Conv{1,2}d`` (``groups=1``).

        ``init``: ``"hosvd"`` (default), ``"hooi"`` (``n_iter`` sweeps from the HOSVD) or
        ``"random"`` (architecture only, e.g. to rebuild a checkpoint). At full rank the
        HOSVD/HOOI layer reproduces the conv's output up to float rounding.
        """
        if conv.groups != 1:
            raise UserInputError(
                f"Tucker conversion needs groups=1, got groups={conv.groups} (depthwise/grouped "
                "convs are skipped by tensorize)")
        if getattr(conv, "padding_mode", "zeros") != "zeros":
            raise UserInputError(
                f"Tucker conversion supports padding_mode='zeros', got {conv.padding_mode!r}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank,
                    stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    bias=conv.bias is not None, init_generator=init_generator, **kw)
        _init_from(layer, conv.weight, init, n_iter)
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias)
        return layer.to(device=conv.weight.device, dtype=conv.weight.dtype)


class TuckerConv1d(_TuckerConvNd):
    """1-D conv with a Tucker kernel ``(O, I, k)``; see the module docstring."""

    ndim = 1


class TuckerConv2d(_TuckerConvNd):
    """2-D conv with a Tucker kernel ``(O, I, kh, kw)``; see the module docstring."""

    ndim = 2


class TuckerLinear(TuckerBase):
    """Linear layer with ``W = U_O G U_I^T`` (a Tucker-2 / low-rank matrix factorisation)."""

    ndim = 0

    def __init__(self, in_features: int, out_features: int, rank: RankSpec = 1.0, *,
                 bias: bool = True, **kw):
        shape = (out_features, in_features)
        kw.setdefault("init_std", 1.0 / math.sqrt(3 * in_features))
        super().__init__(shape, resolve_ranks(rank, shape), bias=bias, **kw)
        self.in_features, self.out_features = in_features, out_features
        self.op = LinearOp()  # runs every matmul, visible to MAC-counting hooks
        self.group_op = ConvOp(1)  # per-sample cores as a grouped 1x1 conv

    def _run(self, x, core, factors):
        if self.binary:
            return xnor_linear(x, tucker_to_tensor(core, factors), self.bias,
                               surrogate=self.surrogate, linear=self.op)
        return tucker_linear(x, core, factors, self.bias, execution=self.execution,
                             linear=self.op)

    def _run_per_sample(self, x, cores, factors):
        if self.binary:
            return xnor_linear(x, tucker_to_tensor(cores, factors, batch_dims=1), self.bias,
                               surrogate=self.surrogate, per_sample=True, conv=self.group_op)
        return tucker_linear_per_sample(x, cores, factors, self.bias, linear=self.op,
                                        conv=self.group_op)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: RankSpec = 1.0, *, init: str = "hosvd",
                    n_iter: int = 5, init_generator: Optional[torch.Generator] = None, **kw):
        """Tucker layer initialised from a pretrained ``nn.Linear`` (see ``from_conv``)."""
        layer = cls(linear.in_features, linear.out_features, rank,
                    bias=linear.bias is not None, init_generator=init_generator, **kw)
        _init_from(layer, linear.weight, init, n_iter)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer.to(device=linear.weight.device, dtype=linear.weight.dtype)


def _init_from(layer: TuckerBase, weight: torch.Tensor, init: str, n_iter: int) -> None:
    if init == "random":
        return
    if init == "hosvd":
        core, factors = hosvd(weight, layer.ranks)
    elif init == "hooi":
        core, factors = hooi(weight, layer.ranks, n_iter=n_iter)
    else:
        raise UserInputError(f"unknown Tucker init {init!r}; choose 'hosvd', 'hooi' or 'random'")
    layer.set_tucker(core, factors)
