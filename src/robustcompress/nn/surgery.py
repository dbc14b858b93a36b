"""Model surgery: find the sites a defense acts on, and rewrite them, in any ``nn.Module``.

A *site* is one place a defense changes:

* an **activation application**: every call of an activation in one forward, whether a module
  call (a module used N times is N sites: torchvision's shared in-place ``self.relu``), a
  function (``F.relu``, ``torch.relu``, ``F.gelu``, ...) or a method (``x.relu()``);
* a **layer**: a ``nn.Conv1d`` / ``nn.Conv2d`` (incl. grouped and depthwise) or ``nn.Linear``
  module (:func:`layer_sites`);
* a **conv -> BatchNorm pair** that can be folded (:func:`fold_batchnorm`).

Sites are found with ``torch.fx`` symbolic tracing when the model traces (exact, needs no data).
A model that does not trace (data-dependent control flow) is run once on an ``example`` batch
with module hooks and a ``TorchFunctionMode`` that records every activation call; such a model
can only be rewritten at module level, so a selected functional site or a selected call of a
module used several times is refused by name (:class:`SiteError`), never skipped.

Rewriting (:func:`insert_after`): when every selected site is the only call of its module, the
module is replaced by ``nn.Sequential(module, new)`` in the module tree (state-dict keys of the
base stay the same plus ``name.1.*``); otherwise the traced graph gets a ``call_module`` node
after each site and the result is a :class:`RewrittenModel` (a ``GraphModule`` that keeps the
``robustcompress_*`` attributes through ``copy.deepcopy``) whose new modules live under
``site_modules.<k>``. :func:`replace_module` is the one way to swap a submodule by dotted name.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.activation_probe import probe_sites, tap_activations  # noqa: F401  (re-exported)
from robustcompress.nn.sites import (  # noqa: F401  (the surgery vocabulary, re-exported)
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    KIND_GROUPS,
    LAYER_TYPES,
    Selector,
    Site,
    SiteError,
    SiteReport,
    number_sites,
)


class _Tracer(fx.Tracer):
    """fx tracer that keeps robustcompress layers (and any module declaring the randomness
    protocol) as leaves, so an already defended model traces."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m).__module__.startswith("robustcompress.nn") or hasattr(m, "stochastic"):
            return True
        if type(m).__name__ == "Normalize" or isinstance(m, nn.Sequential) and not len(m):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` with :class:`_Tracer` (raises what fx raises)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return RewrittenModel(tracer.root, graph)


class RewrittenModel(fx.GraphModule):
    """A traced, rewritten model; ``copy.deepcopy`` keeps its ``robustcompress_*`` attributes."""

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        for k, v in self.__dict__.items():
            if k.startswith("robustcompress_"):
                setattr(res, k, copy.deepcopy(v, memo))
        return res


# ----------------------------------------------------------------------------- discovery
def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<root>"
    path = list(stack.values())[-1][0]
    return path or "<root>"


def _graph_sites(gm: fx.GraphModule) -> list[Site]:
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    raw: list[tuple[str, str, str, str]] = []  # (base name, kind, how, module)
    for n in gm.graph.nodes:
        if n.op == "call_module" and type(modules[n.target]) in ACTIVATION_MODULES:
            raw.append((n.target, ACTIVATION_MODULES[type(modules[n.target])], "module", n.target))
        elif n.op == "call_function" and n.target in ACTIVATION_FUNCTIONS:
            kind = ACTIVATION_FUNCTIONS[n.target]
            raw.append((f"{_scope(n)}:F.{kind}", kind, "function", _scope(n)))
        elif n.op == "call_method" and n.target in ACTIVATION_METHODS:
            raw.append((f"{_scope(n)}:.{n.target}()", ACTIVATION_METHODS[n.target], "method", _scope(n)))
        else:
            continue
        raw[-1] = raw[-1] + (n.name,)
    return number_sites(raw, calls)


def example_input(model: nn.Module, n: int = 2) -> Optional[torch.Tensor]:
    """A batch at the centre of the input box of a model built by the library (its
    ``robustcompress_spec`` records the dataset's shape and box), else ``None``."""
    spec = getattr(model, "robustcompress_spec", None)
    if not spec or "info" not in spec:
        return None
    info = spec["info"]
    lo, hi = info.get("bounds", (0.0, 1.0))
    p = next(iter(model.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    return torch.full((n, *info["shape"]), (lo + hi) / 2, device=dev)


def find_sites(model: nn.Module, example: Optional[torch.Tensor] = None) -> SiteReport:
    """Every activation application of ``model`` (see the module docstring)."""
    try:
        return SiteReport(tuple(_graph_sites(trace(model))), True)
    except Exception as e:  # fx raises many types (TraceError, TypeError, RuntimeError, ...)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    example = example if example is not None else example_input(model)
    if example is None:
        raise SiteError(
            f"the model does not trace with torch.fx ({reason}), so its functional activations "
            "and reused modules cannot be found without running it; pass example=<a batch of "
            "inputs> (configs do this), or make forward traceable (no Python control flow on "
            "tensor values)")
    return SiteReport(tuple(probe_sites(model, example)), False, reason)


def module_sites(model: nn.Module, names: Iterable[str]) -> SiteReport:
    """Sites for explicitly named modules of any type (e.g. SAP after convs, as Athalye et al.'s
    reimplementation): one site per module, rewritten in the module tree."""
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known or n == ""]
    if missing:
        raise UserInputError(f"no module named {missing} in the model; choose among "
                             f"{[n for n in known if n][:40]}")
    return SiteReport(tuple(Site(n, type(known[n]).__name__.lower(), "module", n) for n in names),
                      traced=False)


# ----------------------------------------------------------------------------- rewriting
def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted ``name`` to ``new``, in place (the one copy of this helper)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def copy_records(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Carry the ``robustcompress_*`` attributes (spec, defense record, ...) from src to dst."""
    for k, v in vars(src).items():
        if k.startswith("robustcompress_") and not hasattr(dst, k):
            setattr(dst, k, v)
    return dst


def insert_after(model: nn.Module, make: Callable[[Site], nn.Module], selector: Selector = "relu",
                 *, example: Optional[torch.Tensor] = None,
                 report: Optional[SiteReport] = None) -> nn.Module:
    """Put ``make(site)`` after every selected site; returns the rewritten model (``model`` itself
    when the module tree could be rewritten in place, else a new :class:`RewrittenModel`)."""
    if report is None:
        report = (find_sites(model, example) if isinstance(selector, str)
                  or not _all_modules(model, selector) else module_sites(model, selector))
    sites = report.select(selector)
    if all(s.rewritable_in_tree for s in sites):
        for s in sites:
            replace_module(model, s.module, nn.Sequential(model.get_submodule(s.module), make(s)))
        return model
    if not report.traced:
        bad = [s.name for s in sites if not s.rewritable_in_tree]
        raise SiteError(
            f"these sites need a graph rewrite but the model does not trace with torch.fx "
            f"({report.trace_error}): {bad}; make forward traceable, give each activation its "
            "own nn module (no F.relu, no module used twice), or select other sites")
    return _rewrite_graph(model, sites, make)


def _all_modules(model: nn.Module, names: Sequence[str]) -> bool:
    """True if every name is a module that is not an activation (explicit non-activation sites)."""
    known = dict(model.named_modules())
    return all(n in known and n and type(known[n]) not in ACTIVATION_MODULES for n in names)


def _rewrite_graph(model: nn.Module, sites: list[Site], make, replace: bool = False) -> nn.Module:
    gm = trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    holder = nn.ModuleList()
    gm.add_submodule("site_modules", holder)
    for k, s in enumerate(sites):
        holder.append(make(s))
        node = nodes[s.node]
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(f"site_modules.{k}", (node.args[0] if replace else node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u, _new=new: u is not _new)
        if replace:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return copy_records(model, gm)


def replace_sites(model: nn.Module, make: Callable[[Site], nn.Module], selector: Selector = "relu",
                  *, example: Optional[torch.Tensor] = None) -> nn.Module:
    """Replace every selected activation application by ``make(site)`` applied to the
    activation's input (e.g. a quantised ReLU replacing a ReLU); same rules as
    :func:`insert_after`."""
    report = find_sites(model, example)
    sites = report.select(selector)
    if all(s.rewritable_in_tree for s in sites):
        for s in sites:
            replace_module(model, s.module, make(s))
        return model
    if not report.traced:
        raise SiteError(f"these sites need a graph rewrite but the model does not trace with "
                        f"torch.fx ({report.trace_error}): "
                        f"{[s.name for s in sites if not s.rewritable_in_tree]}")
    return _rewrite_graph(model, sites, make, replace=True)


# ----------------------------------------------------------------------------- layers, BN folding
_FUNCTIONAL_LAYERS = {F.conv1d: "conv1d", F.conv2d: "conv2d", F.linear: "linear"}


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """A conv/linear module: ``groups`` > 1 for grouped and depthwise convs."""

    name: str
    type: str
    groups: int = 1


def layer_sites(model: nn.Module, types: tuple = LAYER_TYPES) -> list[LayerSite]:
    """Every conv/linear *module* of ``model`` (exact types in ``types`` or subclasses), in
    module order."""
    return [LayerSite(n, type(m).__name__, int(getattr(m, "groups", 1)))
            for n, m in model.named_modules() if n and isinstance(m, types)]


def call_order(model: nn.Module, types: tuple = LAYER_TYPES) -> Optional[list[str]]:
    """Modules of ``types`` in the order the traced forward calls them (``None`` if the model
    does not trace)."""
    try:
        gm = trace(model)
    except Exception:
        return None
    mods = dict(gm.named_modules())
    order = [n.target for n in gm.graph.nodes
             if n.op == "call_module" and isinstance(mods[n.target], types)]
    return list(dict.fromkeys(order))


def functional_layers(model: nn.Module) -> Optional[list[str]]:
    """Weight ops called as functions (``F.conv2d(x, self.w)``): no module defense can convert
    them. ``None`` when the model does not trace (then they cannot be seen)."""
    try:
        gm = trace(model)
    except Exception:
        return None
    return [f"{_scope(n)}:F.{_FUNCTIONAL_LAYERS[n.target]}" for n in gm.graph.nodes
            if n.op == "call_function" and n.target in _FUNCTIONAL_LAYERS]


def conv_bn_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """(conv, bn) module pairs where the BN's only input is the conv's output and nothing else
    uses that output: the pairs :func:`fold_batchnorm` folds."""
    mods = dict(gm.named_modules())
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(mods[n.target], nn.modules.batchnorm._BatchNorm):
            continue
        src = n.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(mods[src.target], (nn.Conv1d, nn.Conv2d))):
            pairs.append((src.target, n.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval semantics) whose conv -> BN pairs are folded into the conv
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and the BNs replaced by ``nn.Identity``; the
    module tree and the other state-dict keys are kept. Needs a traceable model."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        gm = trace(model)
    except Exception as e:
        raise SiteError(f"fold_batchnorm needs a model that traces with torch.fx ({e}); make "
                        "forward traceable or fold by hand") from None
    out = copy.deepcopy(model).eval()
    for conv, bn in conv_bn_pairs(gm):
        if not out.get_submodule(bn).track_running_stats:
            raise SiteError(f"BatchNorm {bn!r} keeps no running statistics; it cannot be folded")
        replace_module(out, conv, fuse_conv_bn_eval(out.get_submodule(conv), out.get_submodule(bn)))
        replace_module(out, bn, nn.Identity())
    return out
