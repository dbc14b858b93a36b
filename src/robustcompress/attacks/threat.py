"""The threat model: which perturbations an attacker may add, measured in input units.

A :class:`ThreatModel` holds the norm (``"linf"`` or ``"l2"``), the budget ``eps`` **in input
units** (the units of the tensors a dataset yields: [0, 1] for images, [-1, 1] for audio), the box
``bounds`` every input lies in, and whether the attack is targeted. It also owns the geometry every
attack shares (Foolbox's ``Distance`` object, in plain PyTorch): per-sample norms, the steepest-ascent
direction of a gradient, projection onto the eps-ball intersected with the box, and random starts.

The papers quote eps in three ways, all accepted by :meth:`ThreatModel.from_spec`:

* a fraction string ``"8/255"`` or a float ``0.03`` in input units;
* the 0-255 pixel scale of the image papers: ``eps=8, eps_scale=255`` (``--eps 8 --eps-scale 255``),
  mapped to ``8 / 255 * box_width``;
* raw [-1, 1] sample units for audio (the box is [-1, 1], so ``eps=0.002`` means 0.002 of a full
  scale of 1, i.e. 1/1000 of the box width 2): no scale needed.

An eps that cannot be meant in input units (e.g. ``eps=8`` on [0, 1] images: larger than the whole
box) is refused with a message that names the fix, and so are inputs outside the box (the most
common cause of silently wrong robustness numbers: normalised inputs, attacks.md Part 2 §1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import nn

from robustcompress.errors import ThreatModelError

if TYPE_CHECKING:  # annotations only: seeds imports nothing from here, but keep it lazy
    from robustcompress.attacks.seeds import SampleNoise

NORMS = ("linf", "l2")
#: Inputs may exceed the box by this much (float round-off of loaders and of ``x + delta``).
BOUNDS_TOL = 1e-6

_NORM_ALIASES = {
    "linf": "linf", "inf": "linf", "l_inf": "linf", "l-inf": "linf", "li": "linf",
    "l2": "l2", "2": "l2", "l_2": "l2", "l-2": "l2",
}


def parse_eps(eps: Union[str, float, int]) -> tuple[float, bool]:
    """Parse ``"8/255"``, ``"0.03"``, ``0.03`` or ``8`` into ``(value, was_fraction)``.

    ``was_fraction`` is True for ``"a/b"`` strings, which already carry their own scale.
    """
    if isinstance(eps, bool):
        raise ThreatModelError(f"eps must be a number or a fraction like 8/255, got {eps!r}")
    if isinstance(eps, (int, float)):
        return float(eps), False
    text = str(eps).strip()
    try:
        if "/" in text:
            return float(Fraction(text.replace(" ", ""))), True
        return float(text), False
    except (ValueError, ZeroDivisionError):
        raise ThreatModelError(
            f"cannot read eps {eps!r}; write a number in input units (0.03), a fraction (8/255), "
            "or a 0-255 value with --eps-scale 255 (eps_scale=255)"
        ) from None


def _normalise_norm(norm: str) -> str:
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise ThreatModelError(f"unknown norm {norm!r}; choose linf or l2")
    return _NORM_ALIASES[key]


@dataclass(frozen=True)
class ThreatModel:
    """An eps-ball in one norm, intersected with the input box.

    Attributes
    ----------
    norm : ``"linf"`` or ``"l2"``.
    eps : the budget in input units (``>= 0``).
    bounds : ``(lo, hi)``, the box every clean and adversarial input lies in.
    targeted : if True, attacks are given target labels and succeed when the model predicts them.
    shape : shape of one input (without batch dimension), when known; used to refuse L2 budgets
        larger than the box's diameter and inputs of the wrong shape.
    """

    norm: str = "linf"
    eps: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)
    targeted: bool = False
    shape: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _normalise_norm(self.norm))
        object.__setattr__(self, "eps", float(self.eps))
        lo, hi = (float(b) for b in self.bounds)
        object.__setattr__(self, "bounds", (lo, hi))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ThreatModelError(f"input bounds must be finite with lo < hi, got {self.bounds}")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise ThreatModelError(f"eps must be a finite number >= 0, got {self.eps}")
        width = hi - lo
        if self.norm == "linf" and self.eps > width + 1e-12:
            raise ThreatModelError(
                f"eps={self.eps:g} is larger than the whole input box {list(self.bounds)} "
                f"(width {width:g}) for an Linf attack; eps is in input units: write e.g. "
                f"{_suggest(self.eps)}/255 or pass --eps-scale 255 (eps_scale=255) to give it on "
                "the 0-255 scale"
            )
        if self.norm == "l2" and self.shape is not None:
            diameter = width * math.sqrt(math.prod(self.shape))
            if self.eps > diameter + 1e-9:
                raise ThreatModelError(
                    f"eps={self.eps:g} is larger than the L2 diameter {diameter:g} of the input box "
                    f"{list(self.bounds)} for inputs of shape {self.shape}; give eps in input units "
                    "(e.g. 0.5 or 1.5 for images in [0, 1])"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls,
        norm: str = "linf",
        eps: Union[str, float, int] = 0.0,
        info=None,
        eps_scale: Optional[float] = None,
        targeted: bool = False,
        *,
        bounds: Optional[Sequence[float]] = None,
    ) -> "ThreatModel":
        """Build a threat model from user-facing values.

        Parameters
        ----------
        norm : ``"linf"`` or ``"l2"`` (aliases ``"inf"``, ``"2"``).
        eps : ``"8/255"``, ``0.03``, ``"0.03"``, or a value on the ``eps_scale`` scale.
        info : the dataset's :class:`~robustcompress.data.info.DatasetInfo` (bounds and shape).
            Without it, ``bounds`` (default ``(0, 1)``) is used.
        eps_scale : if given, ``eps`` is on a ``0..eps_scale`` scale of the box width: the image
            papers' ``eps_scale=255`` maps ``eps=8`` to ``8 / 255 * (hi - lo)``. ``None`` means
            eps is already in input units (raw [-1, 1] units for audio).
        targeted : labels passed to the attacks are targets.
        """
        value, was_fraction = parse_eps(eps)
        if info is not None:
            lo, hi = info.bounds
            shape = tuple(info.shape)
        else:
            lo, hi = bounds if bounds is not None else (0.0, 1.0)
            shape = None
        width = float(hi) - float(lo)
        if eps_scale is not None:
            eps_scale = float(eps_scale)
            if not (math.isfinite(eps_scale) and eps_scale > 0):
                raise ThreatModelError(f"eps_scale must be > 0 (e.g. 255), got {eps_scale}")
            if was_fraction:
                raise ThreatModelError(
                    f"eps {eps!r} is already a fraction and eps_scale={eps_scale:g} would scale it "
                    f"again; give either --eps {eps} or --eps {_suggest(value * 255)} "
                    f"--eps-scale {eps_scale:g}"
                )
            if value > eps_scale:
                raise ThreatModelError(
                    f"eps={value:g} exceeds its own scale 0..{eps_scale:g}; give a value between "
                    f"0 and {eps_scale:g}"
                )
            value = value / eps_scale * width
        return cls(norm=norm, eps=value, bounds=(float(lo), float(hi)), targeted=targeted, shape=shape)

    def with_eps(self, eps: float) -> "ThreatModel":
        """The same threat model with another budget (input units)."""
        return replace(self, eps=float(eps))

    @property
    def width(self) -> float:
        return self.bounds[1] - self.bounds[0]

    @property
    def eps_255(self) -> float:
        """eps on the 0-255 scale of the box (what the image papers quote)."""
        return self.eps / self.width * 255.0

    def describe(self) -> str:
        t = ", targeted" if self.targeted else ""
        return f"{self.norm} eps={self.eps:.6g} ({self.eps_255:.4g}/255 of the box {list(self.bounds)}){t}"

    # ------------------------------------------------------------------ checks
    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose declared input box (a ``with_normalization`` wrapper, or the
        dataset / ``input`` recorded by the library when it built the model) is not this threat's
        box: eps and the clipping would be in the wrong units. Undeclared models pass."""
        declared = declared_bounds(model)
        if declared is not None and any(abs(a - b) > 1e-9 for a, b in zip(declared, self.bounds)):
            raise ThreatModelError(
                f"the model declares inputs in {list(declared)} but the threat model's box is "
                f"{list(self.bounds)}; build the threat from the model's dataset "
                "(ThreatModel.from_spec(norm, eps, info)) or pass bounds matching the model")

    def check_inputs(self, x: torch.Tensor) -> None:
        """Refuse inputs an attack cannot be trusted on; each message names the fix.

        Checks: a floating-point tensor with a batch dimension, the declared per-sample shape
        (when known), finite values, and every value inside ``bounds`` up to :data:`BOUNDS_TOL`.
        """
        if not isinstance(x, torch.Tensor):
            raise ThreatModelError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            hint = " (e.g. x.float() / 255 for uint8 images)" if x.dtype == torch.uint8 else ""
            raise ThreatModelError(
                f"inputs have dtype {x.dtype}; attacks need floating-point inputs in "
                f"{list(self.bounds)}{hint}"
            )
        if x.dim() < 2:
            raise ThreatModelError(
                f"inputs must be a batch [B, ...], got shape {tuple(x.shape)}; add a batch "
                "dimension with x.unsqueeze(0)"
            )
        if self.shape is not None and tuple(x.shape[1:]) != self.shape:
            raise ThreatModelError(
                f"inputs have shape {tuple(x.shape[1:])} per sample but the threat model was "
                f"built for {self.shape}; use the dataset the model was trained on"
            )
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise ThreatModelError("inputs contain NaN or inf; clean the data before attacking")
        lo, hi = self.bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin >= lo - BOUNDS_TOL and xmax <= hi + BOUNDS_TOL:
            return
        if xmax > hi + BOUNDS_TOL and xmax > 2.0 and lo >= 0 and xmax <= 255.0 + BOUNDS_TOL:
            fix = "they look like 0-255 pixel values; divide by 255"
        elif xmin < lo - BOUNDS_TOL:
            fix = ("they look normalised (mean/std applied); pass raw inputs and put the "
                   "normalisation inside the model (robustcompress.models.Normalize)")
        else:
            fix = ("rescale them into the box, and put any normalisation inside the model "
                   "(robustcompress.models.Normalize)")
        raise ThreatModelError(
            f"inputs lie in [{xmin:.4g}, {xmax:.4g}], outside the declared box {list(self.bounds)}; "
            + fix
        )

    # ------------------------------------------------------------------ geometry
    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample size of ``delta`` [B, ...] in this norm, shape [B]."""
        flat = delta.flatten(1)
        if self.norm == "linf":
            return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
        return flat.norm(p=2, dim=1)

    def steepest(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit size in this norm (per sample).

        Linf: ``sign(grad)``; L2: ``grad / ||grad||_2`` (zero where the gradient is zero).
        """
        if self.norm == "linf":
            return grad.sign()
        n = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        return grad / n.view(-1, *([1] * (grad.dim() - 1)))

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp into the box."""
        return x.clamp(self.bounds[0], self.bounds[1])

    def project_delta(self, delta: torch.Tensor, eps: Optional[float] = None) -> torch.Tensor:
        """Project perturbations onto the eps-ball (per sample; the box is not applied)."""
        eps = self.eps if eps is None else eps
        if self.norm == "linf":
            return delta.clamp(-eps, eps)
        n = delta.flatten(1).norm(p=2, dim=1)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
        return delta * factor.view(-1, *([1] * (delta.dim() - 1)))

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Map ``x_adv`` into the eps-ball around ``x`` and then into the box.

        Clamping into the box only moves each coordinate towards ``x`` (which lies in the box), so
        the result stays inside the ball: it lies in the intersection. For Linf this is the exact
        Euclidean projection onto the intersection; for L2 it is the usual ball-then-box
        approximation (as in every reference implementation). Up to float round-off of
        ``x + delta`` (about 1e-7), ``norm_of(result - x) <= eps``.
        """
        return self.clip(x + self.project_delta(x_adv - x))

    def random_delta(self, x: torch.Tensor, noise: "SampleNoise") -> torch.Tensor:
        """A perturbation per sample, uniform in the ball (not clipped to the box).

        Linf: uniform in the cube (Madry et al. 2018). L2: uniform in the ball (Gaussian direction,
        radius ``eps * U^(1/d)``). Noise is drawn per sample from ``noise`` (see
        :class:`robustcompress.attacks.seeds.SampleNoise`), so it does not depend on the batch.
        """
        if self.norm == "linf":
            return (noise.rand(x) * 2 - 1) * self.eps
        return uniform_l2_ball(x, noise, self.eps)

    def random_start(self, x: torch.Tensor, noise: "SampleNoise") -> torch.Tensor:
        """A random point of the ball around ``x`` (:meth:`random_delta`, clamped into the box)."""
        return self.clip(x + self.random_delta(x, noise))


def uniform_l2_ball(x: torch.Tensor, noise, eps: float) -> torch.Tensor:
    """Per-sample perturbations uniform in the L2 ball of radius ``eps`` (same shape as ``x``)."""
    d = x[0].numel()
    direction = noise.randn(x)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(
        -1, *([1] * (x.dim() - 1))
    )
    u = noise.rand_per_sample(x)  # [B]
    radius = eps * u.pow(1.0 / max(d, 1))
    return direction * radius.view(-1, *([1] * (x.dim() - 1)))


def _suggest(value: float) -> str:
    r = round(value)
    return str(int(r)) if abs(value - r) < 1e-9 else f"{value:g}"


def declared_bounds(model: nn.Module) -> Optional[tuple[float, float]]:
    """The input box ``model`` declares (see :meth:`ThreatModel.check_model`), or ``None``."""
    if getattr(model, "input_bounds", None) is not None:
        return tuple(float(b) for b in model.input_bounds)
    spec = getattr(model, "robustcompress_spec", None) or {}
    box = (spec.get("input") or {}).get("bounds") or (spec.get("info") or {}).get("bounds")
    return None if box is None else (float(box[0]), float(box[1]))
