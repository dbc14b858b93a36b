"""Straight-through / BPDA surrogate gradients for non-differentiable forward ops.

``surrogate_gradient(value, x, surrogate)`` returns a tensor equal to ``value`` in the forward pass
whose gradient with respect to ``x`` is the derivative of a chosen smooth surrogate ``g``:

==============  =====================================  =======================================
name            g(x)                                   d/dx
==============  =====================================  =======================================
``identity``    x                                      1 (BPDA with the identity, Athalye 2018)
``clipped``     clamp(x, lo, hi)                       1 on [lo, hi], else 0 (XNOR-Net's STE)
``tanh``        tanh(x)                                1 - tanh(x)^2 (Table 4 of Defensive
                                                       Tensorization)
``tanh0.75``    tanh(0.75 x)                           0.75 (1 - tanh(0.75 x)^2) (ibid.)
``exact``       (none)                                 0: the true derivative of sign/round,
                                                       i.e. what a naive attacker sees
==============  =====================================  =======================================

It is written with the ``value.detach() + g(x) - g(x).detach()`` identity rather than a custom
``autograd.Function``, so it composes with ``torch.func`` (``grad``, ``vmap``) and double
backward. The forward value is exact (``value`` is returned bit for bit).
"""

from __future__ import annotations

import torch

SURROGATES = ("identity", "clipped", "tanh", "tanh0.75", "exact")


def check_surrogate(surrogate: str) -> None:
    """Refuse a surrogate name that is not in :data:`SURROGATES`, listing the choices."""
    if surrogate not in SURROGATES:
        from robustcompress.errors import UserInputError

        raise UserInputError(
            f"unknown surrogate gradient {surrogate!r}; choose one of {', '.join(SURROGATES)}"
        )



def surrogate_gradient(
    value: torch.Tensor,
    x: torch.Tensor,
    surrogate: str = "identity",
    lo: float = -1.0,
    hi: float = 1.0,
) -> torch.Tensor:
    """``value`` in the forward pass, ``d g(x) / dx`` in the backward pass (see module doc).

    Parameters
    ----------
    value : the exact (non-differentiable) forward output, same shape as ``x``.
    x : the input whose gradient the surrogate defines.
    surrogate : one of :data:`SURROGATES`.
    lo, hi : the pass-band of ``"clipped"`` (XNOR-Net uses [-1, 1]; a quantiser its range).
    """
    check_surrogate(surrogate)
    value = value.detach()
    if surrogate == "exact":
        return value + 0.0 * x  # keeps the graph (zero gradient), as the true derivative
    if surrogate == "identity":
        g = x
    elif surrogate == "clipped":
        g = x.clamp(lo, hi)
    elif surrogate == "tanh":
        g = torch.tanh(x)
    else:  # tanh0.75
        g = torch.tanh(0.75 * x)
    return value + (g - g.detach())


def sign(x: torch.Tensor, surrogate: str = "clipped") -> torch.Tensor:
    """``sign(x)`` with ``sign(0) = +1`` (binary nets need two levels) and a surrogate backward."""
    value = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    return surrogate_gradient(value, x, surrogate)


def round_(x: torch.Tensor, surrogate: str = "identity", lo: float = -float("inf"),
           hi: float = float("inf")) -> torch.Tensor:
    """``torch.round(x)`` with a surrogate backward (identity by default: the usual STE)."""
    return surrogate_gradient(torch.round(x), x, surrogate, lo, hi)
