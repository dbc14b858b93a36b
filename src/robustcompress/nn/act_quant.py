"""Activation quantisation and the Lipschitz (orthogonality) regulariser of Defensive Quantization.

Lin, Gan & Han, "Defensive Quantization: When Efficiency Meets Robustness", ICLR 2019.

* :func:`quantize_activation` / :class:`ActQuant`: clip to ``[0, hi]`` and round to ``2^bits``
  uniform levels, ``y = round(clip(x, 0, hi) / hi * (2^k - 1)) / (2^k - 1) * hi``, with a
  straight-through backward. It replaces a ReLU (the clip at 0 is the ReLU). ``hi = 1`` by
  default; ``learn_range=True`` makes ``hi`` a parameter trained through the clip, as in PACT
  (Choi et al. 2018); DQ itself does not fix how the range is chosen [unspecified].
* :func:`orthogonality_penalty`: ``beta / 2 * sum_l ||W_l^T W_l - I||_F^2`` with conv weights
  reshaped to ``O x (I k k)``.

Deviation: for a non-square ``W`` (``O != I k k``) the literal ``W^T W - I`` cannot vanish
(its rank is at most ``min(O, I k k)``); by default (``gram="auto"``) we penalise the Gram
matrix of the *smaller* side (``W W^T`` when ``O < I k k``), i.e. the Parseval tight-frame
condition, which equals the paper's formula for square weights. ``gram="wtw"`` gives the literal
formula.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.ste import check_surrogate, surrogate_gradient


def quantize_activation(
    x: torch.Tensor, bits: Optional[int], hi: torch.Tensor | float = 1.0, surrogate: str = "clipped"
) -> torch.Tensor:
    """k-bit activation quantiser on ``[0, hi]`` (``bits=None``: clip only, full precision).

    ``surrogate``: ``"clipped"`` (default, the STE used in training: gradient 1 inside
    ``[0, hi]``, 0 outside, and a gradient for a learned ``hi`` through the clip), ``"identity"``
    (gradient 1 everywhere: BPDA), ``"exact"`` (zero gradient, what a naive attacker sees), or any
    other name of :data:`robustcompress.nn.ste.SURROGATES`.
    """
    check_surrogate(surrogate)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    y = torch.minimum(x.clamp(min=0.0), hi_t)  # differentiable in x and in hi
    if bits is None:
        return y
    levels = 2 ** int(bits) - 1
    q = torch.round(y / hi_t * levels) / levels * hi_t
    if surrogate == "clipped":
        return y + (q - y).detach()
    return surrogate_gradient(q, x, surrogate)


class ActQuant(nn.Module):
    """Module form of :func:`quantize_activation`; a drop-in replacement for ``nn.ReLU``.

    Declares ``non_differentiable = True`` (when ``bits`` is set) and a switchable
    ``surrogate``, so the evaluator attacks it with BPDA.
    """

    def __init__(self, bits: Optional[int] = 4, hi: float = 1.0, learn_range: bool = False,
                 surrogate: str = "clipped"):
        super().__init__()
        if bits is not None and not 1 <= int(bits) <= 16:
            raise UserInputError(f"activation bits must be in 1..16 (or None), got {bits}")
        check_surrogate(surrogate)
        self.bits = None if bits is None else int(bits)
        self.non_differentiable = self.bits is not None
        self.surrogate = surrogate
        t = torch.tensor(float(hi))
        if learn_range:
            self.hi = nn.Parameter(t)
        else:
            self.register_buffer("hi", t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activation(x, self.bits, self.hi.clamp(min=1e-6), self.surrogate)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, surrogate={self.surrogate!r}"


def replace_relus(model: nn.Module, bits: Optional[int], *, hi: float = 1.0,
                  learn_range: bool = False) -> nn.Module:
    """Replace every ReLU application of ``model`` by its own :class:`ActQuant` (a module used
    twice gets two; ``F.relu`` is rewritten in the traced graph, see
    :mod:`robustcompress.nn.surgery`); returns the rewritten model. Other activations (ReLU6,
    GELU, ...) are refused by name: DQ quantises ReLU outputs on ``[0, hi]``."""
    from robustcompress.nn import surgery

    report = surgery.find_sites(model)
    other = [s.name for s in report.sites if s.kind != "relu"]
    if other:
        kinds = sorted({s.kind for s in report.sites if s.kind != "relu"})
        raise surgery.SiteError(
            f"defensive quantization replaces ReLUs by quantised ReLUs on [0, hi], but these "
            f"activations are not ReLUs ({', '.join(kinds)}) and would change meaning: {other[:20]}"
            f"{' ...' if len(other) > 20 else ''}; use a ReLU model or another defense")
    return surgery.replace_sites(model, lambda _s: ActQuant(bits, hi, learn_range), "relu")


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """Weights of every conv/linear layer reshaped to ``O x (I k k)``."""
    return [m.weight.reshape(m.weight.shape[0], -1) for m in model.modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def orthogonality_penalty(model: nn.Module, beta: float, gram: str = "auto") -> torch.Tensor:
    """``beta / 2 * sum_l ||G_l - I||_F^2`` over conv/linear layers (see module docstring)."""
    if gram not in ("auto", "wtw", "wwt"):
        raise UserInputError(f"gram must be 'auto', 'wtw' or 'wwt', got {gram!r}")
    total = None
    for w in weight_matrices(model):
        o, n = w.shape
        use_wwt = gram == "wwt" or (gram == "auto" and o < n)
        g = w @ w.t() if use_wwt else w.t() @ w
        eye = torch.eye(g.shape[0], dtype=w.dtype, device=w.device)
        term = (g - eye).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * beta * total
