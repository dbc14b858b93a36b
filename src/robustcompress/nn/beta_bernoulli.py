"""Beta-Bernoulli channel masks of ANP-VS (Madaan, Shin & Hwang, ICML 2020).

Functional core (pure functions of the unconstrained parameters) plus one thin module,
:class:`BetaBernoulliMask`, and a model walker :func:`add_bb_masks` that inserts masks into any
``nn.Module`` by name.

Every number here follows the original TensorFlow code (``divyam3897/ANP_VS`` @32c5e86, built on
Variational_Dropouts; see ``shared/reference/defenses.md`` section (e)):

* one mask variable per output channel (conv) or unit (linear);
* ``a = softplus(max(-10, a_uc))``, ``b = softplus(clip(b_uc, -10, 50))``;
* initial ``b_uc = 0.5413`` (b = 1.0); conv masks ``a_uc = 2.0`` (E[pi] = 0.68), linear masks
  ``a_uc = -1`` (E[pi] = 0.24);
* prior Beta(alpha, 1) with ``alpha = 1e-4``;
* training: pi ~ Kumaraswamy(a, b) drawn **once per forward, shared across the batch**, then
  z ~ RelaxedBernoulli(temperature 0.1, logits = logit(pi)) **per example and channel**;
* eval: deterministic ``z = E[pi] = b * B(1 + 1/a, b)``, set to 0 where ``E[pi] <= 1e-3``; the
  surviving channels are *scaled* by E[pi], not multiplied by 1.

Reference: Madaan, Shin, Hwang, "Adversarial Neural Pruning with Latent Vulnerability
Suppression", ICML 2020; Lee et al., "Adaptive network sparsification with dependent
variational beta-Bernoulli dropout", 2018 (the mask itself).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn import surgery

#: Defaults of the original code.
B_UC_INIT = 0.5413
CONV_A_UC_INIT = 2.0
LINEAR_A_UC_INIT = -1.0
PRIOR_ALPHA = 1e-4
TEMPERATURE = 0.1
THRESHOLD = 1e-3
_EULER_GAMMA = 0.5772156649015329
_U_EPS = 1e-10


# ----------------------------------------------------------------------------- functional core
def bb_params(a_uc: torch.Tensor, b_uc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained Kumaraswamy parameters ``(a, b)`` from the unconstrained ones (as the code)."""
    a = F.softplus(a_uc.clamp(min=-10.0))
    b = F.softplus(b_uc.clamp(-10.0, 50.0))
    return a, b


def kumaraswamy_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E[pi] for pi ~ Kumaraswamy(a, b): ``b * B(1 + 1/a, b)`` (computed with log-gamma)."""
    t = 1.0 + 1.0 / a
    return b * torch.exp(torch.lgamma(t) + torch.lgamma(b) - torch.lgamma(t + b))


def kumaraswamy_sample(
    a: torch.Tensor, b: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """One draw pi ~ Kumaraswamy(a, b) per entry: ``(1 - u^(1/b))^(1/a)``, u ~ U(1e-10, 1-1e-10).

    Differentiable in ``a`` and ``b`` (reparametrised).
    """
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    u = u * (1.0 - 2 * _U_EPS) + _U_EPS
    return (1.0 - u.pow(1.0 / b)).pow(1.0 / a)


def relaxed_bernoulli(
    pi: torch.Tensor,
    shape: tuple[int, ...],
    temperature: float = TEMPERATURE,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """z ~ RelaxedBernoulli(temperature, logits = logit(pi)), broadcast ``pi`` to ``shape``.

    ``z = sigmoid((logit(pi) + log u - log(1 - u)) / temperature)`` (Maddison et al. 2017), with
    independent ``u`` per entry of ``shape`` (per example and channel in ANP-VS).
    """
    p = pi.clamp(1e-6, 1.0 - 1e-6)  # logits stay finite when pi saturates
    logits = torch.log(p) - torch.log1p(-p)
    u = torch.rand(shape, generator=generator, device=pi.device, dtype=pi.dtype)
    u = u.clamp(_U_EPS, 1.0 - _U_EPS)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def bb_kl(a: torch.Tensor, b: torch.Tensor, alpha: float = PRIOR_ALPHA) -> torch.Tensor:
    """KL(Kumaraswamy(a, b) || Beta(alpha, 1)) per unit, the closed form of the original code.

    ``(1 - alpha/a)(-gamma - psi(b) - 1/b) + log(a b / alpha) - (b - 1)/b``.

    This is the general Kumaraswamy-to-Beta KL of Nalisnick & Smyth (2017) with the prior's second
    parameter equal to 1, for which its infinite Taylor series term vanishes: the expression is
    exact, not an approximation (tested against numerical integration).
    """
    return (
        (1.0 - alpha / a) * (-_EULER_GAMMA - torch.digamma(b) - 1.0 / b)
        + torch.log(a * b / alpha)
        - (b - 1.0) / b
    )


def eval_mask(a: torch.Tensor, b: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Deterministic eval-time mask: E[pi], set to 0 where ``E[pi] <= threshold``."""
    m = kumaraswamy_mean(a, b)
    return torch.where(m > threshold, m, torch.zeros_like(m))


def bb_mask(
    a_uc: torch.Tensor,
    b_uc: torch.Tensor,
    batch: int,
    *,
    stochastic: bool,
    temperature: float = TEMPERATURE,
    threshold: float = THRESHOLD,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The mask z of one layer: ``[batch, C]`` when stochastic, ``[1, C]`` when deterministic."""
    a, b = bb_params(a_uc, b_uc)
    if not stochastic:
        return eval_mask(a, b, threshold).unsqueeze(0)
    pi = kumaraswamy_sample(a, b, generator)  # one draw shared by the whole batch
    return relaxed_bernoulli(pi, (batch, a.shape[0]), temperature, generator)


# ----------------------------------------------------------------------------- module
class BetaBernoulliMask(nn.Module):
    """Multiply channel ``c`` (dim 1) of the input by a Beta-Bernoulli mask ``z_c``.

    Random in training mode (``stochastic`` is True exactly when ``self.training`` and the noise is
    not frozen by :func:`robustcompress.nn.freeze_noise`), deterministic E[pi]-scaling in eval
    mode, as in the original code. ``granularity = "batch"``: pi is shared across the batch (z is
    per example), so repeating a batch does not give independent draws.

    Parameters
    ----------
    num_channels : number of channels / units masked (dim 1 of the input).
    channel_dim : 1 (conv maps, ``[B, C, ...]``) or -1 (a Linear's output, ``[B, ..., C]``, e.g.
        transformer tokens).
    a_uc_init : unconstrained init of ``a`` (2.0 for conv, -1.0 for linear in the code).
    b_uc_init, alpha, temperature, threshold : see the module docstring.
    """

    granularity = "batch"

    def __init__(
        self,
        num_channels: int,
        a_uc_init: float = CONV_A_UC_INIT,
        b_uc_init: float = B_UC_INIT,
        *,
        alpha: float = PRIOR_ALPHA,
        temperature: float = TEMPERATURE,
        threshold: float = THRESHOLD,
        channel_dim: int = 1,
    ):
        super().__init__()
        if channel_dim not in (1, -1):
            raise UserInputError(f"channel_dim must be 1 (conv maps) or -1 (features last), got {channel_dim}")
        self.channel_dim = channel_dim
        self.a_uc = nn.Parameter(torch.full((num_channels,), float(a_uc_init)))
        self.b_uc = nn.Parameter(torch.full((num_channels,), float(b_uc_init)))
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.generator: Optional[torch.Generator] = None
        self._frozen = False

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return bool(self.training and not self._frozen)

    @stochastic.setter
    def stochastic(self, value: bool) -> None:
        # freeze_noise() sets False and restores True; eval mode is deterministic regardless.
        self._frozen = not bool(value)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return bb_params(self.a_uc, self.b_uc)

    def expected_mask(self) -> torch.Tensor:
        """The eval-time mask (E[pi] with values <= threshold set to 0), shape ``[C]``."""
        return eval_mask(*self.params(), self.threshold)

    def kl(self) -> torch.Tensor:
        """Sum over units of KL(q(pi) || Beta(alpha, 1))."""
        return bb_kl(*self.params(), self.alpha).sum()

    @torch.no_grad()
    def n_active(self) -> int:
        return int((self.expected_mask() > 0).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = bb_mask(
            self.a_uc, self.b_uc, x.shape[0], stochastic=self.stochastic,
            temperature=self.temperature, threshold=self.threshold, generator=self.generator,
        ).to(x.dtype)
        if self.channel_dim == -1:  # a Linear's features are last: [B, ..., C] (tokens)
            return x * z.view(z.shape[:1] + (1,) * (x.dim() - 2) + z.shape[1:])
        return x * z.view(z.shape + (1,) * (x.dim() - 2))

    def extra_repr(self) -> str:
        return f"{self.a_uc.shape[0]}, alpha={self.alpha}, temperature={self.temperature}"


# ----------------------------------------------------------------------------- model walker
MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def maskable_layers(model: nn.Module) -> list[str]:
    """Names of the conv/linear layers that get an output mask: all but the classifier, in
    module order. The classifier is the last ``nn.Linear`` *called* (torch.fx order) when the
    model traces, else the last one registered (a ViT's head may be registered before its
    blocks)."""
    names = [s.name for s in surgery.layer_sites(model, MASKABLE)]
    called = surgery.call_order(model, nn.Linear)
    linears = called if called else [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]
    if linears:
        names.remove(linears[-1])
    return names


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def add_bb_masks(
    model: nn.Module,
    where: str = "outputs",
    *,
    layers: Optional[list[str]] = None,
    alpha: float = PRIOR_ALPHA,
    temperature: float = TEMPERATURE,
    threshold: float = THRESHOLD,
) -> nn.Module:
    """Insert a :class:`BetaBernoulliMask` after conv/linear layers, **in place**; returns ``model``.

    Each selected layer ``name`` is replaced by ``nn.Sequential(layer, mask)`` (so state-dict keys
    become ``name.0.weight`` and ``name.1.a_uc``); the mask therefore sits after the conv and
    before any BN / ReLU, as in the original VGG code.

    Parameters
    ----------
    where : ``"outputs"`` (default): after every conv and every hidden linear layer, i.e. all but
        the classifier (see :func:`maskable_layers`); ``"conv_out"``: after the convs only.
    layers : explicit layer names instead of the default selection.

    Deviation from the original: the reference code masks the *inputs* of the FC layers; for the
    second FC that is the same as masking the first FC's output (done here), but the mask on the
    flattened conv features feeding FC-1 (a per-pixel-and-channel unit mask) is not added: the
    channel masks of the last conv already prune those features channel-wise.
    """
    if where not in ("outputs", "conv_out"):
        raise UserInputError(f"unknown mask placement {where!r}; use where='outputs' or 'conv_out'")
    names = maskable_layers(model) if layers is None else list(layers)
    if where == "conv_out" and layers is None:
        names = [n for n in names if not isinstance(model.get_submodule(n), nn.Linear)]
    if not names:
        raise UserInputError(
            "add_bb_masks found no conv/hidden linear layer to mask; the model needs at least one "
            "nn.Conv1d/nn.Conv2d or a non-final nn.Linear"
        )
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, MASKABLE):
            raise UserInputError(f"layer {name!r} is {type(layer).__name__}, not a conv/linear")
        a0 = LINEAR_A_UC_INIT if isinstance(layer, nn.Linear) else CONV_A_UC_INIT
        w = layer.weight
        mask = BetaBernoulliMask(
            _out_channels(layer), a0, alpha=alpha, temperature=temperature, threshold=threshold,
            channel_dim=-1 if isinstance(layer, nn.Linear) else 1,
        ).to(device=w.device, dtype=w.dtype)
        surgery.replace_module(model, name, nn.Sequential(layer, mask))
    return model


def bb_masks(model: nn.Module) -> Iterator[tuple[str, BetaBernoulliMask]]:
    """(name, mask) for every Beta-Bernoulli mask in ``model``."""
    for n, m in model.named_modules():
        if isinstance(m, BetaBernoulliMask):
            yield n, m


def bb_kl_total(model: nn.Module) -> torch.Tensor:
    """Sum of the KL terms of every mask of ``model`` (0 if none)."""
    terms = [m.kl() for _, m in bb_masks(model)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, m in bb_masks(model) for p in (m.a_uc, m.b_uc)]


def mask_summary(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer name: (active channels, total channels)}`` under the eval-time rule."""
    out = {}
    for n, m in bb_masks(model):
        with torch.no_grad():
            out[n.rsplit(".", 1)[0] if n.endswith(".1") else n] = (m.n_active(), m.a_uc.numel())
    return out


__all__ = [
    "BetaBernoulliMask", "add_bb_masks", "bb_kl", "bb_kl_total", "bb_mask", "bb_masks",
    "bb_params", "eval_mask", "kumaraswamy_mean", "kumaraswamy_sample", "mask_parameters",
    "mask_summary", "maskable_layers", "relaxed_bernoulli",
]
