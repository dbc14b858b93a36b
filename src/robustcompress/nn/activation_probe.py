"""Activation applications seen at run time: module hooks plus a ``TorchFunctionMode`` record
every activation call of the forwards run inside :func:`tap_activations` (for models that do not
trace with ``torch.fx``, and for penalties and statistics on any model)."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from robustcompress.nn.sites import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    Selector,
    Site,
    SiteReport,
    number_sites,
)

class _ActivationProbe(TorchFunctionMode):
    """Records every activation application of the forwards run inside it, with its output:
    module calls through hooks, function/method calls made outside activation modules through
    the torch-function mode. ``raw`` holds ``[base, kind, how, scope, output]`` in call order."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stack: list[str] = []
        self.calls: dict[str, int] = {}
        self.raw: list[list] = []
        self.inside_activation = 0
        self._handles: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.inside_activation:
            scope = self.stack[-1] if self.stack else "<root>"
            if func in ACTIVATION_FUNCTIONS:
                kind = ACTIVATION_FUNCTIONS[func]
                self.raw.append([f"{scope}:F.{kind}", kind, "function", scope, out])
            elif getattr(func, "__name__", "") in ACTIVATION_METHODS and "Tensor" in repr(func):
                kind = ACTIVATION_METHODS[func.__name__]
                self.raw.append([f"{scope}:.{func.__name__}()", kind, "method", scope, out])
        return out

    def _pre(self, name: str, mod: nn.Module):
        def hook(_m, _inp):
            self.stack.append(name or "<root>")
            self.calls[name] = self.calls.get(name, 0) + 1
            if type(mod) in ACTIVATION_MODULES:
                self.raw.append([name, ACTIVATION_MODULES[type(mod)], "module", name, None])
                self.inside_activation += 1
        return hook

    def _post(self, mod: nn.Module):
        def hook(_m, _inp, out):
            self.stack.pop()
            if type(mod) in ACTIVATION_MODULES:
                self.inside_activation -= 1
                for r in reversed(self.raw):  # the open entry of this module call
                    if r[2] == "module" and r[4] is None:
                        r[4] = out
                        break
        return hook

    def __enter__(self):
        for name, mod in self.model.named_modules():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name, mod)))
            self._handles.append(mod.register_forward_hook(self._post(mod)))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def sites(self) -> list[Site]:
        return number_sites([tuple(r[:4]) + (None,) for r in self.raw], self.calls)

    def records(self, selector: Selector = "relu") -> list[tuple[Site, torch.Tensor]]:
        """(site, output) of the selected applications recorded so far (selector as in
        :meth:`SiteReport.select`), in call order."""
        sites = self.sites()
        chosen = {s.name for s in SiteReport(tuple(sites), False).select(selector)}
        return [(s, r[4]) for s, r in zip(sites, self.raw) if s.name in chosen]

    def outputs(self, selector: Selector = "relu") -> list[torch.Tensor]:
        return [out for _, out in self.records(selector)]


def tap_activations(model: nn.Module) -> _ActivationProbe:
    """Context manager recording each activation application's output in the block, for
    penalties and statistics (L1 activation sparsity): works on any model, traced or not::

        with tap_activations(model) as tap:
            logits = model(x)
        acts = tap.outputs("relu")
    """
    return _ActivationProbe(model)


def probe_sites(model: nn.Module, example: torch.Tensor) -> list[Site]:
    """Activation sites of an untraceable model from one eval-mode forward on ``example``."""
    was = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), tap_activations(model) as tap:
            model(example)
    finally:
        for m, t in was:
            m.training = t
    return tap.sites()
