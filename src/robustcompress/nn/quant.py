"""k-bit symmetric weight fake-quantisation, mu-law companding and bit packing.

Functional core for the robust weight quantisation of Song, Fallon & Li (AAAI-21 RSEML workshop,
"Improving Adversarial Robustness in Weight-quantized Neural Networks", arXiv 2012.14965), plus a
thin :class:`FakeQuantize` parametrisation (``torch.nn.utils.parametrize``) that puts the quantiser
on a layer's weight.

Quantiser (our choice, documented because the paper does not fix it)
--------------------------------------------------------------------
Symmetric, *restricted range*: ``s = max|W| / (2^{k-1} - 1)`` and
``W_q = s * clip(round(W / s), -(2^{k-1} - 1), 2^{k-1} - 1)``, i.e. ``2^k - 1`` levels (7 at 3 bits).
The asymmetric ``-2^{k-1}`` level is never used: with a symmetric scale it is unreachable except
by clipping, and dropping it keeps zero exactly representable and the grid symmetric (the
convention of most symmetric weight quantisers).  ``max|W|`` is taken per layer (default) or per
output channel (``per_channel=True``, dim 0).  At least 2 bits are required (1 bit would leave only
the zero level; use :func:`robustcompress.nn.ste.sign` for binary weights).

mu-law (Song et al.)
--------------------
``F(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu)`` on ``x = W / max|W|``.  Two modes, because the
paper does not say whether the mapping stays in the deployed model:

``"grid"`` (default, companding): compress, quantise uniformly, expand -- a non-uniform grid
    with finer levels near 0; without quantisation it is the identity.
``"map"``: the deployed weights are ``max|W| * F(W / max|W|)`` (then quantised uniformly).  This
    changes the function even in float, which is what the paper's "Orig.+mu" rows (different
    from "Orig.") suggest.

Gradients
---------
Rounding uses :func:`robustcompress.nn.ste.round_` with a selectable surrogate (identity STE by
default) so quantisation-aware training gets straight-through weight gradients.  Note that the
*input* gradient of a layer with quantised weights is exact whatever the surrogate (the layer is
linear in its input), so attacks never see masked gradients here.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.ste import round_

MU_LAW_MODES = ("grid", "map")


def _check_bits(bits: int, lo: int = 2, hi: int = 8) -> None:
    if not isinstance(bits, int) or not lo <= bits <= hi:
        raise UserInputError(f"bits must be an integer in [{lo}, {hi}], got {bits!r}; "
                             f"pick e.g. bits=3 (the paper's setting)")


def qmax(bits: int) -> int:
    """Largest code of the symmetric restricted-range quantiser: ``2^{k-1} - 1``."""
    return 2 ** (bits - 1) - 1


def absmax(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """``max|W|`` per layer (scalar tensor) or per output channel (shape ``[O, 1, ...]``)."""
    if per_channel:
        return w.detach().abs().flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return w.detach().abs().amax()


def quant_scale(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """Step ``s = max|W| / (2^{k-1} - 1)``; an all-zero tensor gets ``s = 1`` (codes are 0)."""
    _check_bits(bits)
    m = absmax(w, per_channel)
    return torch.where(m > 0, m / qmax(bits), torch.ones_like(m))


def fake_quant(w: torch.Tensor, bits: int, per_channel: bool = False,
               surrogate: str = "identity") -> torch.Tensor:
    """``s * clip(round(W / s), -qmax, qmax)`` with a straight-through backward.

    Parameters
    ----------
    w : weight tensor (any shape; dim 0 is the output channel).
    bits : 2..8.
    per_channel : one scale per output channel instead of one per tensor.
    surrogate : backward of the rounding (see :mod:`robustcompress.nn.ste`); ``"identity"`` is
        the usual STE of quantisation-aware training.
    """
    s = quant_scale(w, bits, per_channel)
    q = qmax(bits)
    return s * round_(w / s, surrogate).clamp(-q, q)


def mu_law_compress(x: torch.Tensor, mu: float = 255.0) -> torch.Tensor:
    """``sign(x) ln(1 + mu|x|) / ln(1 + mu)`` for ``x`` in [-1, 1]."""
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def mu_law_expand(c: torch.Tensor, mu: float = 255.0) -> torch.Tensor:
    """Inverse of :func:`mu_law_compress`: ``sign(c) ((1 + mu)^|c| - 1) / mu``."""
    return torch.sign(c) * torch.expm1(c.abs() * math.log1p(mu)) / mu


def mu_law_quant(w: torch.Tensor, bits: Optional[int], mu: float = 255.0,
                 per_channel: bool = False, mode: str = "grid",
                 surrogate: str = "identity") -> torch.Tensor:
    """mu-law weight mapping (Song et al.) followed by uniform k-bit quantisation.

    ``mode="grid"``: compress ``W/max|W|``, quantise uniformly to ``bits``, expand, rescale
    (``bits=None`` returns ``W`` up to float error).  ``mode="map"``: the deployed weight is
    ``max|W| F(W/max|W|)``, quantised uniformly when ``bits`` is given.
    """
    if mode not in MU_LAW_MODES:
        raise UserInputError(f"unknown mu-law mode {mode!r}; choose 'grid' or 'map'")
    if mu <= 0:
        raise UserInputError(f"mu must be > 0, got {mu}; the telephony value is 255")
    m = absmax(w, per_channel)
    m = torch.where(m > 0, m, torch.ones_like(m))
    c = mu_law_compress(w / m, mu)
    if bits is not None:
        _check_bits(bits)
        q = qmax(bits)
        c = round_(c * q, surrogate).clamp(-q, q) / q
    if mode == "map":
        return m * c
    return m * mu_law_expand(c, mu)


class FakeQuantize(nn.Module):
    """Parametrisation ``W -> quantised W`` for ``torch.nn.utils.parametrize``.

    Declares ``non_differentiable = True`` and a ``surrogate`` (see :mod:`robustcompress.nn.protocol`)
    so :func:`robustcompress.nn.protocol.straight_through` can switch the rounding backward.
    ``mu=None`` gives the uniform quantiser; a float ``mu`` the mu-law quantiser in ``mu_mode``.
    ``bits=None`` with a ``mu`` applies only the mu-law map (float).
    """

    non_differentiable = True

    def __init__(self, bits: Optional[int] = 3, per_channel: bool = False,
                 mu: Optional[float] = None, mu_mode: str = "grid",
                 surrogate: str = "identity"):
        super().__init__()
        if bits is None and mu is None:
            raise UserInputError("FakeQuantize needs bits, mu or both")
        if bits is not None:
            _check_bits(bits)
        self.bits = bits
        self.per_channel = per_channel
        self.mu = mu
        self.mu_mode = mu_mode
        self.surrogate = surrogate

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mu is not None:
            return mu_law_quant(w, self.bits, self.mu, self.per_channel, self.mu_mode,
                                self.surrogate)
        return fake_quant(w, self.bits, self.per_channel, self.surrogate)

    def codes_and_scale(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes in ``[-qmax, qmax]`` and the per-layer/per-channel ``max|W|`` scale.

        Uniform: ``W_q = codes * scale / qmax``.  mu-law ``grid``:
        ``W_q = scale * expand(codes / qmax)``; ``map``: ``W_q = scale * codes / qmax``.
        """
        if self.bits is None:
            raise UserInputError("a float mu-law map has no integer codes; set bits")
        m = absmax(w, self.per_channel)
        m = torch.where(m > 0, m, torch.ones_like(m))
        q = qmax(self.bits)
        x = mu_law_compress(w.detach() / m, self.mu) if self.mu is not None else w.detach() / m
        return torch.round(x * q).clamp(-q, q).to(torch.int8), m

    def extra_repr(self) -> str:
        mu = f", mu={self.mu}, mu_mode={self.mu_mode}" if self.mu is not None else ""
        return f"bits={self.bits}, per_channel={self.per_channel}{mu}"


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes in ``[0, 2^bits)`` into a flat uint8 tensor, ``bits`` bits each.

    Bits are laid out little-endian (bit 0 of code 0 is bit 0 of byte 0); the output has
    ``ceil(n * bits / 8)`` bytes, so 8 three-bit codes take 3 bytes.  Use :func:`unpack_bits`
    with the original count to invert it.
    """
    _check_bits(bits, 1, 8)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise UserInputError(f"codes must lie in [0, {2 ** bits}) to pack into {bits} bits; "
                             "offset signed codes by qmax first")
    shifts = torch.arange(bits, device=flat.device)
    bitmat = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-bitmat.numel()) % 8
    bitmat = torch.cat([bitmat, bitmat.new_zeros(pad)]).view(-1, 8)
    weights = 2 ** torch.arange(8, device=flat.device)
    return (bitmat * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes as int64."""
    _check_bits(bits, 1, 8)
    p = packed.reshape(-1).to(torch.int64)
    bitmat = ((p[:, None] >> torch.arange(8, device=p.device)) & 1).reshape(-1)[: n * bits]
    if bitmat.numel() != n * bits:
        raise UserInputError(f"packed tensor holds fewer than {n} codes of {bits} bits")
    return (bitmat.view(n, bits) << torch.arange(bits, device=p.device)).sum(dim=1)


def export_quantized(w: torch.Tensor, fq: FakeQuantize) -> dict[str, torch.Tensor]:
    """Packed storage of a quantised weight: ``codes`` (uint8, ``bits`` bits each), ``scale``
    (float32 ``max|W|`` per layer or channel) and ``shape`` (int32)."""
    codes, m = fq.codes_and_scale(w)
    unsigned = (codes.to(torch.int64) + qmax(fq.bits)).reshape(-1)
    return {
        "codes": pack_bits(unsigned, fq.bits),
        "scale": m.reshape(-1).to(torch.float32),
        "shape": torch.tensor(list(w.shape), dtype=torch.int32),
    }
