"""Magnitude masks on weights via ``torch.nn.utils.parametrize``, and compact (sparse/packed) export.

A mask is a parametrisation ``W = original * mask`` (:class:`MagnitudeMask`, a persistent bool
buffer).  Unlike ``torch.nn.utils.prune`` it survives ``copy.deepcopy`` and keeps the gradient to
``original``; because the effective weight is a product with a fixed 0/1 mask, pruned weights stay
exactly zero through any retraining (their gradient is zero, and weight decay on ``original`` can
never leak into the effective weight).

Pruning follows the magnitude criterion of Han et al. (2015) used by Guo et al. (NeurIPS 2018,
"Sparse DNNs with Improved Adversarial Robustness"): :func:`magnitude_masks` prunes a fraction of
the *remaining* weights with the smallest ``|W|``, per layer (``"uniform"``, the paper's choice:
"weight tensors within each layer are uniformly pruned") or over all layers at once (``"global"``).

Layers with a mask and/or a :class:`robustcompress.nn.quant.FakeQuantize` get an instance method
``export_tensors()`` (the compression contract): a bitmap or index list of the non-zeros plus their
float values or packed k-bit codes, so bytes on disk reflect the zeros and the bit width.
"""

from __future__ import annotations

import math
import types
from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from robustcompress.errors import UserInputError
from robustcompress.nn.quant import FakeQuantize, pack_bits, qmax, unpack_bits, mu_law_expand

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
SCOPES = ("uniform", "global")


class MagnitudeMask(nn.Module):
    """Parametrisation ``W -> W * mask`` with a fixed boolean mask (persistent buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def extra_repr(self) -> str:
        return f"kept={int(self.mask.sum())}/{self.mask.numel()}"


def prunable_layers(model: nn.Module, keep_first_last: bool = False,
                    names: Optional[Iterable[str]] = None) -> list[tuple[str, nn.Module]]:
    """Linear/Conv1d/Conv2d layers in registration (= forward, for the zoo models) order.

    ``keep_first_last`` leaves the first and last of them dense (Guo et al. do this for CIFAR-10
    VGG/ResNet); ``names`` restricts to the given module names.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if names is not None:
        wanted = set(names)
        missing = wanted - {n for n, _ in layers}
        if missing:
            raise UserInputError(f"no Linear/Conv layer named {sorted(missing)}; "
                                 f"choose among {[n for n, _ in layers]}")
        layers = [(n, m) for n, m in layers if n in wanted]
    if keep_first_last:
        layers = layers[1:-1]
    if not layers:
        raise UserInputError("no layer left to prune; use keep_first_last=False or a deeper model")
    return layers


def _parametrizations(module: nn.Module) -> list[nn.Module]:
    if parametrize.is_parametrized(module, "weight"):
        return list(module.parametrizations.weight)
    return []


def get_mask(module: nn.Module) -> Optional[MagnitudeMask]:
    """The :class:`MagnitudeMask` on ``module.weight``, if any."""
    return next((p for p in _parametrizations(module) if isinstance(p, MagnitudeMask)), None)


def get_quantizer(module: nn.Module) -> Optional[FakeQuantize]:
    """The :class:`FakeQuantize` on ``module.weight``, if any."""
    return next((p for p in _parametrizations(module) if isinstance(p, FakeQuantize)), None)


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The stored (un-parametrised) weight tensor."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _prune_smallest(scores: torch.Tensor, keep: torch.Tensor, amount: float) -> torch.Tensor:
    """New keep-mask: drop ``round(amount * kept)`` kept entries with the smallest score.

    Ties are broken by index (stable sort), so the kept count is exact.
    """
    flat_keep = keep.reshape(-1)
    n_kept = int(flat_keep.sum())
    k = _round_half_up(amount * n_kept)
    s = torch.where(flat_keep, scores.reshape(-1).abs(), torch.full_like(scores.reshape(-1), -1.0))
    order = torch.argsort(s, stable=True)
    n_dropped = flat_keep.numel() - n_kept
    new = flat_keep.clone()
    new[order[n_dropped:n_dropped + k]] = False
    return new.view_as(keep)


def magnitude_masks(weights: dict[str, torch.Tensor], amount: float, scope: str = "uniform",
                    masks: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Keep-masks after pruning a fraction ``amount`` of the remaining weights by magnitude.

    Parameters
    ----------
    weights : name -> effective weight.
    amount : fraction in [0, 1) of the currently kept weights to remove (Guo et al.'s rho).
    scope : ``"uniform"`` (the same fraction in every layer; exact per layer) or ``"global"``
        (one threshold over all layers; the total count is exact).
    masks : current keep-masks (all kept when missing).

    Returns
    -------
    dict name -> bool keep-mask.
    """
    if not 0.0 <= amount < 1.0:
        raise UserInputError(f"prune fraction must be in [0, 1), got {amount}; "
                             "the paper uses rho = 1/3 per round")
    if scope not in SCOPES:
        raise UserInputError(f"unknown pruning scope {scope!r}; choose 'uniform' or 'global'")
    masks = masks or {}
    keep = {n: masks.get(n, torch.ones_like(w, dtype=torch.bool)).to(torch.bool)
            for n, w in weights.items()}
    if scope == "uniform":
        return {n: _prune_smallest(w.detach(), keep[n], amount) for n, w in weights.items()}
    names = list(weights)
    flat_w = torch.cat([weights[n].detach().reshape(-1) for n in names])
    flat_k = torch.cat([keep[n].reshape(-1) for n in names])
    new = _prune_smallest(flat_w, flat_k, amount)
    out, start = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = new[start:start + size].view_as(weights[n])
        start += size
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Put (or update) a :class:`MagnitudeMask` on each named layer's weight, in place.

    The stored weight is zeroed where the mask is off, so the raw parameter, the effective weight
    and the export all agree.  Returns ``model``.
    """
    for name, mask in masks.items():
        module = model.get_submodule(name)
        existing = get_mask(module)
        with torch.no_grad():
            if existing is not None:
                existing.mask.copy_(mask)
            else:
                if get_quantizer(module) is not None:
                    raise UserInputError(f"layer {name!r} is already quantised; prune before "
                                         "quantising (masks must come first in the chain)")
                parametrize.register_parametrization(module, "weight", MagnitudeMask(mask))
            raw_weight(module).mul_(mask.to(raw_weight(module).dtype))
        attach_export(module)
    return model


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> keep-mask of every masked layer."""
    return {n: m.mask for n, mod in model.named_modules() if (m := get_mask(mod)) is not None}


def magnitude_prune(model: nn.Module, amount: float, *, scope: str = "uniform",
                    keep_first_last: bool = False,
                    layers: Optional[Iterable[str]] = None) -> nn.Module:
    """One magnitude-pruning step in place: remove ``amount`` of the remaining weights.

    Repeated calls compose (0.5 then 0.5 leaves 25% of the weights).  Returns ``model``.
    """
    chosen = prunable_layers(model, keep_first_last, layers)
    weights = {n: m.weight for n, m in chosen}
    current = {n: get_mask(m).mask for n, m in chosen if get_mask(m) is not None}
    return apply_masks(model, magnitude_masks(weights, amount, scope, current))


def mask_structure(model: nn.Module, keep_first_last: bool = False,
                   layers: Optional[Iterable[str]] = None) -> nn.Module:
    """All-ones masks on the prunable layers (architecture only, for checkpoint rebuild)."""
    chosen = prunable_layers(model, keep_first_last, layers)
    return apply_masks(model, {n: torch.ones_like(m.weight, dtype=torch.bool)
                               for n, m in chosen if get_mask(m) is None})


def remove_weight_parametrizations(module: nn.Module) -> nn.Module:
    """Bake every weight parametrisation into a plain weight and drop them, in place.

    ``copy.deepcopy`` of a parametrised module shares torch's dynamically created
    ``Parametrized<Layer>`` class with the original, and ``remove_parametrizations`` deletes the
    ``weight`` property from that class -- which would break every copy.  The module first gets a
    private copy of the class, so removing on one copy leaves the others intact.
    """
    if not parametrize.is_parametrized(module, "weight"):
        return module
    cls = module.__class__
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    module.__dict__.pop("export_tensors", None)
    return module


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake masks into plain weights (zeros stay) and drop the parametrisations, in place."""
    for _, module in list(model.named_modules()):
        if get_mask(module) is not None:
            others = [p for p in _parametrizations(module) if not isinstance(p, MagnitudeMask)]
            if others:
                raise UserInputError("remove_masks works on masked-only layers; "
                                     "remove the quantiser first")
            remove_weight_parametrizations(module)
    return model


# ----------------------------------------------------------------------------- compact export

def _index_dtype(n: int) -> torch.dtype:
    return torch.int16 if n <= 2 ** 15 else torch.int32


def _sparse_index(keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cheaper of a packed 1-bit bitmap and an index list (int16/int32) of the kept entries."""
    flat = keep.reshape(-1)
    n, nnz = flat.numel(), int(flat.sum())
    idx_dtype = _index_dtype(n)
    bitmap_bytes = (n + 7) // 8
    index_bytes = nnz * torch.empty((), dtype=idx_dtype).element_size()
    if index_bytes < bitmap_bytes:
        return {"indices": torch.nonzero(flat).reshape(-1).to(idx_dtype)}
    return {"bitmap": pack_bits(flat.to(torch.int64), 1)}


def _pre_quant_weight(module: nn.Module) -> torch.Tensor:
    """Weight fed to the quantiser: the original through the parametrisations before it."""
    w = raw_weight(module)
    for p in _parametrizations(module):
        if isinstance(p, FakeQuantize):
            break
        w = p(w)
    return w


def export_layer(module: nn.Module) -> dict[str, torch.Tensor]:
    """Compact tensors of a masked and/or quantised layer (see the module docstring).

    Keys: ``weight.shape``; ``weight.bitmap`` or ``weight.indices`` when masked; ``weight.values``
    (float32 non-zeros) or ``weight.codes`` (packed k-bit codes of the kept entries) +
    ``weight.scale``; ``bias`` when present.
    """
    with torch.no_grad():
        mask = get_mask(module)
        fq = get_quantizer(module)
        w_eff = module.weight.detach()
        keep = mask.mask if mask is not None else torch.ones_like(w_eff, dtype=torch.bool)
        out: dict[str, torch.Tensor] = {"weight.shape": torch.tensor(list(w_eff.shape),
                                                                     dtype=torch.int32)}
        if mask is not None:
            out.update({f"weight.{k}": v for k, v in _sparse_index(keep).items()})
        if fq is not None and fq.bits is not None:
            codes, scale = fq.codes_and_scale(_pre_quant_weight(module))
            kept = codes.reshape(-1)[keep.reshape(-1)].to(torch.int64) + qmax(fq.bits)
            out["weight.codes"] = pack_bits(kept, fq.bits)
            out["weight.scale"] = scale.reshape(-1).to(torch.float32)
        else:
            out["weight.values"] = w_eff.reshape(-1)[keep.reshape(-1)].to(torch.float32)
        if getattr(module, "bias", None) is not None:
            out["bias"] = module.bias.detach().to(torch.float32)
        return out


def import_layer(t: dict[str, torch.Tensor], bits: Optional[int] = None,
                 mu: Optional[float] = None, mu_mode: str = "grid") -> torch.Tensor:
    """Rebuild the effective weight from :func:`export_layer`'s tensors (lossless)."""
    shape = [int(s) for s in t["weight.shape"]]
    n = math.prod(shape)
    if "weight.indices" in t:
        keep = torch.zeros(n, dtype=torch.bool)
        keep[t["weight.indices"].to(torch.int64)] = True
    elif "weight.bitmap" in t:
        keep = unpack_bits(t["weight.bitmap"], 1, n).bool()
    else:
        keep = torch.ones(n, dtype=torch.bool)
    w = torch.zeros(n, dtype=torch.float32)
    if "weight.codes" in t:
        if bits is None:
            raise UserInputError("pass bits to decode a quantised export")
        q = qmax(bits)
        x = (unpack_bits(t["weight.codes"], bits, int(keep.sum())) - q).float() / q
        if mu is not None and mu_mode == "grid":
            x = mu_law_expand(x, mu)
        scale = t["weight.scale"]
        if scale.numel() > 1:  # per output channel
            rows = torch.arange(n) // (n // shape[0])
            w[keep] = x * scale[rows[keep]]
        else:
            w[keep] = x * scale
    else:
        w[keep] = t["weight.values"]
    return w.view(shape)


def attach_export(module: nn.Module) -> None:
    """Bind ``module.export_tensors()`` (deepcopy-safe bound method) to :func:`export_layer`."""
    module.export_tensors = types.MethodType(export_layer, module)


def exported_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Sum of ``numel * element_size`` of exported tensors (payload bytes)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
