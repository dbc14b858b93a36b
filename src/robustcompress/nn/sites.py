"""The vocabulary of model surgery: which calls are activations, what a site is, and how a
selector ("relu", "activations", a kind, site or module names) picks sites from a report.
:mod:`robustcompress.nn.surgery` finds and rewrites them."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError

#: activation module types and the kind (PyTorch op name) they apply
ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
    nn.SELU: "selu", nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish",
    nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Hardtanh: "hardtanh",
    nn.PReLU: "prelu", nn.Softplus: "softplus", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
}
#: functional activations (torch.* and F.*) and their kind
ACTIVATION_FUNCTIONS: dict[Callable, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu", F.selu: "selu",
    torch.selu: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.mish: "mish",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.hardtanh: "hardtanh",
    F.prelu: "prelu", torch.prelu: "prelu", F.softplus: "softplus", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
}
#: tensor methods that apply an activation
ACTIVATION_METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid",
                                      "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh"}
#: named groups of kinds a defense can select (``"relu"``: the paper's ReLU maps, incl. ReLU6)
KIND_GROUPS = {"relu": frozenset({"relu", "relu6"}),
               "activations": frozenset(ACTIVATION_MODULES.values())}
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)

Selector = Union[str, Sequence[str]]


class SiteError(UserInputError):
    """A defense cannot cover some sites of a model; the message names them and the fix."""


@dataclasses.dataclass(frozen=True)
class Site:
    """One activation application (or one call of a named module).

    ``name``: ``module`` for the only call of a module, ``module#k`` (1-based) for the k-th call
    of a module used several times, ``scope:F.relu`` (``#k`` when repeated) for a function or
    method call inside module ``scope`` (``<root>`` for the model's own forward).
    ``how``: ``"module"``, ``"function"`` or ``"method"``; ``module``: the called module (module
    calls) or the enclosing one; ``calls``: how often that module is called in one forward.
    """

    name: str
    kind: str
    how: str
    module: str
    calls: int = 1
    node: Optional[str] = None

    @property
    def rewritable_in_tree(self) -> bool:
        return self.how == "module" and self.calls == 1


@dataclasses.dataclass(frozen=True)
class SiteReport:
    """All activation sites of a model, how they were found, and why tracing failed (if it did)."""

    sites: tuple[Site, ...]
    traced: bool
    trace_error: str = ""

    def select(self, selector: Selector) -> list[Site]:
        """Sites named by ``selector``: a kind group (``"relu"``, ``"activations"``), a kind
        (``"gelu"``), or a list of site names / module names / kinds (a module name selects every
        call of that module, whatever its type)."""
        return _select(self, selector)


def number_sites(raw, calls: dict[str, int]) -> list[Site]:
    """Name repeated bases ``base#1``, ``base#2``, ... in call order."""
    total: dict[str, int] = {}
    for r in raw:
        total[r[0]] = total.get(r[0], 0) + 1
    seen: dict[str, int] = {}
    out = []
    for base, kind, how, module, node in raw:
        seen[base] = seen.get(base, 0) + 1
        name = base if total[base] == 1 else f"{base}#{seen[base]}"
        n_calls = calls.get(module, 1) if how == "module" else 1
        out.append(Site(name, kind, how, module, n_calls, node))
    return out


def _select(report: SiteReport, selector: Selector) -> list[Site]:
    sites = list(report.sites)
    if isinstance(selector, str):
        kinds = KIND_GROUPS.get(selector, frozenset({selector}))
        if selector not in KIND_GROUPS and selector not in KIND_GROUPS["activations"]:
            raise UserInputError(
                f"unknown site selector {selector!r}; use 'relu' (ReLU and ReLU6 applications), "
                "'activations' (every activation), a kind such as 'gelu', or a list of site or "
                "module names (`robustcompress defenses inspect` lists them)")
        chosen = [s for s in sites if s.kind in kinds]
        if not chosen:
            found = sorted({s.kind for s in sites}) or ["none"]
            raise SiteError(f"the model applies no {selector!r} activation (found: "
                            f"{', '.join(found)}); choose layers='activations' or a kind listed")
        return chosen
    return _select_names(report, list(selector))


def _select_names(report: SiteReport, names: list[str]) -> list[Site]:
    by_name = {s.name: s for s in report.sites}
    chosen: list[Site] = []
    unknown = []
    for name in names:
        if name in by_name:
            chosen.append(by_name[name])
        elif any(s.module == name and s.how == "module" for s in report.sites):
            chosen += [s for s in report.sites if s.module == name and s.how == "module"]
        elif name in KIND_GROUPS["activations"]:
            chosen += [s for s in report.sites if s.kind == name]
        else:
            unknown.append(name)
    if unknown:
        raise SiteError(f"no activation site or module named {unknown}; choose among "
                        f"{[s.name for s in report.sites][:40]} or a module name")
    return list(dict.fromkeys(chosen))
