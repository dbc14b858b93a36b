"""Channel removal: delete a layer's output channels along with what they feed, exactly.

General structural surgery on conv/linear models, used by ANP-VS's export
(:func:`robustcompress.defenses.anp_vs.export_pruned`) and open to any method that zeroes whole
output channels. :func:`find_chains` follows each producer layer's output through channel-wise
modules (:data:`CHANNELWISE`) to the one conv/linear consuming it; :func:`remove_channels` deletes
the dropped channels from the producer, the BatchNorms in between and the consumer's inputs,
folding a dropped channel's constant value at the consumer into its bias. :func:`apply_plan` and
:func:`verified_plan` do that for many layers on a copy and keep only what reproduces a reference
model; :func:`pruned_structure` rebuilds such an architecture (weights undefined) for a checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from robustcompress.nn.surgery import LAYER_TYPES

#: Modules a pruned channel may pass through between its producer and the next weight layer:
#: they act on each channel separately (BatchNorm is sliced with the channels).
CHANNELWISE = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
)


# ============================================================================ chain discovery
@dataclass
class Chain:
    """A producer layer, the channel-wise modules after it and the one weight layer consuming it."""

    producer: str
    members: list[str]
    consumer: Optional[str]
    per_channel: int = 1  # inputs of a linear consumer per producer channel (flattened space)
    reason: str = ""  # why the chain is unsafe ("" if safe)
    out_shape: tuple[int, ...] = ()


def leaf_calls(model: nn.Module,
               example: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """``(name, module, input, output)`` of every leaf module call of one eval forward on
    ``example``, in call order (the model's train/eval flags are restored)."""
    calls = []
    handles = []
    for name, m in model.named_modules():
        if name and not list(m.children()):
            def hook(mod, inp, out, _n=name):
                if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    calls.append((_n, mod, inp[0], out))
            handles.append(m.register_forward_hook(hook))
    was = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, t in was:
            m.training = t
    return calls


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.numel() == b.numel()


def find_chains(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, Chain]:
    """For each producer ``names[i]`` (a conv/linear), follow its output through channel-wise
    modules to the next conv/linear, by matching tensors between consecutive module calls of one
    eval forward on ``example``. A chain is unsafe (``reason`` set) if the output goes through a
    module that mixes channels, a functional op the hooks cannot see (residual additions,
    concatenations), or feeds several modules."""
    calls = leaf_calls(model, example)
    index = {n: i for i, (n, *_rest) in enumerate(calls)}
    chains = {}
    for name in names:
        if name not in index:
            chains[name] = Chain(name, [], None, reason="layer not executed in forward")
            continue
        i = index[name]
        cur = calls[i][3]
        out_shape = tuple(cur.shape[1:])
        members: list[str] = []
        chain = None
        for j in range(i + 1, len(calls)):
            n, mod, inp, out = calls[j]
            if not _same_storage(inp, cur):
                continue
            users = [c for c in calls[j + 1:] if _same_storage(c[2], cur) and c[0] != n]
            if users and not isinstance(mod, (nn.Flatten, nn.Identity)):
                chain = Chain(name, members, None,
                              reason=f"the input of {n} also feeds {users[0][0]}")
                break
            if isinstance(mod, LAYER_TYPES):
                if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups != 1:
                    chain = Chain(name, members, n, reason=f"consumer {n} is a grouped conv")
                elif isinstance(mod, nn.Linear):
                    c = out_shape[0]
                    if mod.in_features % c:
                        chain = Chain(name, members, n, reason=f"{n} inputs are not channel blocks")
                    else:
                        chain = Chain(name, members, n, mod.in_features // c)
                else:
                    chain = Chain(name, members, n)
                break
            if not isinstance(mod, CHANNELWISE):
                chain = Chain(name, members, None,
                              reason=f"{n} ({type(mod).__name__}) mixes channels")
                break
            members.append(n)
            cur = out
        if chain is None:
            chain = Chain(name, members, None, reason="output leaves through a functional op "
                                                      "(e.g. a residual addition)")
        chain.out_shape = out_shape
        chains[name] = chain
    return chains


# ============================================================================ removal
@torch.no_grad()
def pruned_constants(model: nn.Module, chain: Chain) -> torch.Tensor:
    """What a channel that is identically 0 at the producer becomes at the consumer's input
    (e.g. ReLU(BN(0)) = ReLU(beta - mean gamma / sigma)): ``[1, C, ...]`` (or ``[1, C * S]``)."""
    z = torch.zeros((1,) + chain.out_shape, dtype=model.get_submodule(chain.producer).weight.dtype,
                    device=model.get_submodule(chain.producer).weight.device)
    for n in chain.members:
        m = model.get_submodule(n)
        was = m.training
        m.eval()
        z = m(z)
        m.train(was)
    return z


def removable_channels(model: nn.Module, chain: Chain,
                       pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(channels of ``pruned`` that can be removed exactly, their constants at the consumer
    input): a constant entering a zero-padded conv is not removable (padding would differ)."""
    k = pruned_constants(model, chain)
    cons = model.get_submodule(chain.consumer)
    c = chain.out_shape[0]
    if isinstance(cons, nn.Linear):
        return pruned.clone(), k.reshape(c, -1)
    kc = k.reshape(c, -1)
    const = (kc.amax(1) == kc.amin(1))
    zero_pad = any(p != 0 for p in _as_tuple(cons.padding)) and cons.padding_mode == "zeros"
    ok = const & ((kc[:, 0] == 0) | (not zero_pad))
    return pruned & ok, kc


def _as_tuple(p) -> tuple:
    return tuple(p) if isinstance(p, (tuple, list)) else (p,)


@torch.no_grad()
def _slice_out(layer: nn.Module, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = int(keep.numel())
    else:
        layer.out_channels = int(keep.numel())


@torch.no_grad()
def _slice_bn(bn: nn.Module, keep: torch.Tensor) -> None:
    if bn.weight is not None:
        bn.weight = nn.Parameter(bn.weight[keep].clone())
        bn.bias = nn.Parameter(bn.bias[keep].clone())
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[keep].clone()
        bn.running_var = bn.running_var[keep].clone()
    bn.num_features = int(keep.numel())


@torch.no_grad()
def _slice_in(layer: nn.Module, keep: torch.Tensor, c: int, per_channel: int) -> None:
    w = layer.weight
    if isinstance(layer, nn.Linear):
        w = w.reshape(w.shape[0], c, per_channel)[:, keep].reshape(w.shape[0], -1)
        layer.in_features = int(w.shape[1])
    else:
        w = w[:, keep]
        layer.in_channels = int(keep.numel())
    layer.weight = nn.Parameter(w.clone())


@torch.no_grad()
def _fold_constants(layer: nn.Module, remove: torch.Tensor, k: torch.Tensor, c: int,
                    per_channel: int) -> None:
    """Add the contribution of the removed (constant) input channels to ``layer``'s bias."""
    idx = remove.nonzero().flatten()
    if idx.numel() == 0 or not bool((k[idx] != 0).any()):
        return
    w = layer.weight
    if isinstance(layer, nn.Linear):
        wc = w.reshape(w.shape[0], c, per_channel)[:, idx]  # [O, r, S]
        delta = torch.einsum("ors,rs->o", wc, k[idx])
    else:
        delta = (w[:, idx].flatten(2).sum(2) * k[idx, 0]).sum(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.clone())
    else:
        layer.bias = nn.Parameter(layer.bias + delta)


def remove_channels(model: nn.Module, chain: Chain, keep: torch.Tensor,
                    constants: Optional[torch.Tensor] = None) -> None:
    """Remove the producer's channels not in ``keep`` (bool [C]) along the chain, in place;
    ``constants`` (from :func:`removable_channels`) are folded into the consumer's bias."""
    c = chain.out_shape[0]
    cons = model.get_submodule(chain.consumer)
    if constants is not None:
        _fold_constants(cons, ~keep, constants, c, chain.per_channel)
    keep = keep.nonzero().flatten()  # indices from here on
    _slice_in(cons, keep, c, chain.per_channel)
    for n in chain.members:
        m = model.get_submodule(n)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            _slice_bn(m, keep)
    _slice_out(model.get_submodule(chain.producer), keep)


def apply_plan(folded: nn.Module, chains: dict[str, Chain], plan: dict) -> nn.Module:
    """A copy of ``folded`` with ``plan`` (``{producer: (keep [C] bool, constants)}``) removed."""
    out = copy.deepcopy(folded)
    for name, (keep, k) in plan.items():
        remove_channels(out, chains[name], keep.to(k.device), k)
    return out


def max_abs_diff(model: nn.Module, ref: nn.Module, example: torch.Tensor) -> float:
    """Largest output difference of ``model`` to ``ref`` on ``example`` (inf if it cannot run)."""
    try:
        return float((model(example) - ref(example)).abs().max())
    except RuntimeError:  # shapes no longer fit (e.g. an invisible residual coupling)
        return float("inf")


def verified_plan(folded: nn.Module, chains: dict[str, Chain], plan: dict, ref: nn.Module,
                  example: torch.Tensor, atol: float) -> tuple[list[str], float]:
    """The layers whose removal keeps the output within ``atol`` of ``ref``: all of them
    if that verifies, else the largest prefix-greedy subset that does (one forward per layer)."""
    diff = max_abs_diff(apply_plan(folded, chains, plan), ref, example)
    if diff <= atol:
        return list(plan), diff
    accepted: list[str] = []
    diff = max_abs_diff(folded, ref, example)
    for name in plan:
        trial = {n: plan[n] for n in accepted + [name]}
        d = max_abs_diff(apply_plan(folded, chains, trial), ref, example)
        if d <= atol:
            accepted.append(name)
            diff = d
    return accepted, diff


def pruned_structure(model: nn.Module, kept_channels: dict[str, int],
                     example: torch.Tensor) -> nn.Module:
    """The exported architecture (weights undefined) from a base model and ``{layer: kept count}``:
    used to rebuild an exported checkpoint before loading its state dict."""
    chains = find_chains(model, list(kept_channels), example)
    for name, n in kept_channels.items():
        c = chains[name]
        total = c.out_shape[0] if c.out_shape else 0
        if n < total:
            keep = torch.zeros(total, dtype=torch.bool)
            keep[:n] = True
            remove_channels(model, c, keep)
    return model
