"""Draws of a model's randomness: EOT input gradients and Monte-Carlo predictions.

* :func:`input_gradient`: ``d loss / d x`` only (``torch.autograd.grad`` with respect to the
  input), so the model's parameter ``.grad`` buffers are never touched and no weight gradient is
  computed; the model's train/eval mode is never changed. For stochastic models (modules declaring
  ``stochastic=True``, see :mod:`robustcompress.nn.protocol`) it averages over ``eot_samples``
  draws of the model's randomness (Expectation over Transformation, Athalye et al. 2018).
* :func:`draw_logits` and :func:`mc_predict`: the logits of each draw and the Monte-Carlo averaged
  softmax that verdicts are computed from (see :mod:`robustcompress.attacks.verdicts`).
* :func:`over_draws`: the plan shared by all of them (and by
  :class:`~robustcompress.attacks.eot.ExpectationModel`): ``n`` draws as forwards over stacked
  copies of the batch, halved on GPU out-of-memory errors.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.attacks.losses import LossFn, resolve_loss
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import is_stochastic, use_generator

#: Draws of a stochastic model's randomness per gradient when the caller does not say
#: (AutoAttack's ``version='rand'`` uses 20).
DEFAULT_EOT_SAMPLES = 20
#: Draws averaged for the final prediction of a stochastic model when the caller does not say.
DEFAULT_MC_SAMPLES = 20

#: Rows per stacked forward on CPU when the caller gives no bound: larger stacks fall out of the
#: caches and run slower than separate passes (measured on a shared 2-core VM, LeNet-5, EOT-20 of
#: a batch of 64: all 1280 rows in one pass 1.5-1.7x the time of twenty 64-row passes; stacks of
#: 128-256 rows 0.9-1.16x, within the machine's noise).
CPU_MAX_ROWS = 256


def samples_vectorizable(model: nn.Module) -> bool:
    """True if every stochastic module draws independently per sample (``granularity="sample"``).

    Then repeating the batch n times in one forward gives n independent draws per input. Modules
    that do not declare a granularity are treated as ``"batch"`` (one draw shared by the batch).
    """
    return all(
        getattr(m, "granularity", "batch") == "sample"
        for m in model.modules()
        if getattr(m, "stochastic", False)
    )


def resolve_draws(model: nn.Module, n: Optional[int], default: int) -> int:
    """Number of draws to average: 1 for deterministic models, ``n`` (or ``default``) otherwise."""
    if not is_stochastic(model):
        return 1
    n = default if n is None else int(n)
    if n < 1:
        raise UserInputError(f"the number of samples must be >= 1, got {n}")
    return n


def _copies_per_forward(model: nn.Module, batch: int, n: int, max_rows: Optional[int]) -> list[int]:
    """Split ``n`` draws into forwards of ``c`` stacked copies of the batch (sum of c = n)."""
    if n <= 1:
        return [1]
    if samples_vectorizable(model):
        k = n if max_rows is None else max(1, int(max_rows) // max(batch, 1))
    else:
        k = 1
    k = min(k, n)
    return [k] * (n // k) + ([n % k] if n % k else [])


def generator_scope(model: nn.Module, generator: Optional[torch.Generator]):
    """The model's stochastic modules draw from ``generator`` inside the block (no-op if ``None``)."""
    return use_generator(model, generator) if generator is not None else contextlib.nullcontext()


def repeat_rows(t: torch.Tensor, c: int) -> torch.Tensor:
    """``c`` copies of the batch ``t`` stacked along the first dimension (``t`` itself if ``c == 1``)."""
    return t if c == 1 else t.repeat(c, *([1] * (t.dim() - 1)))


def bcast_rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``v [B]`` viewed as ``[B, 1, ..., 1]`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _objective_of_copies(model: nn.Module, fn: LossFn, x: torch.Tensor, y: torch.Tensor, c: int,
                         targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective [c*B], logits [c*B, C])`` of one forward over ``c`` stacked copies of the batch."""
    logits = model(repeat_rows(x, c))
    obj = fn(logits, repeat_rows(y, c))
    return (-obj if targeted else obj), logits


def over_draws(model: nn.Module, batch: int, n: int, max_rows: Optional[int], run: Callable[[int], tuple],
               device: Optional[torch.device] = None):
    """``[run(c) for c in plan]`` over chunks of ``c`` stacked copies of the batch (sum of c = n).

    ``max_rows=None`` stacks without limit on accelerators and up to :data:`CPU_MAX_ROWS` rows on
    CPU. On a GPU out-of-memory error the whole computation starts again with half as many copies
    per forward ("vectorised where memory allows, chunked otherwise"); with one copy it re-raises.
    """
    rows = max_rows
    if rows is None and device is not None and device.type == "cpu":
        rows = CPU_MAX_ROWS
    while True:
        plan = _copies_per_forward(model, batch, n, rows)
        try:
            return [run(c) for c in plan]
        except torch.cuda.OutOfMemoryError:
            if plan[0] <= 1:
                raise
            rows = (plan[0] // 2) * max(batch, 1)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def sum_parts(parts: list, i: int):
    """The sum over the chunks of :func:`over_draws` of each chunk's ``i``-th output."""
    out = parts[0][i]
    for p in parts[1:]:
        out = out + p[i]
    return out


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: Union[str, LossFn] = "ce",
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    targeted: bool = False,
    max_rows: Optional[int] = None,
    return_logits: bool = False,
):
    """Per-sample attacker objective and its gradient with respect to the input only.

    Parameters
    ----------
    model : any ``nn.Module`` mapping ``[B, ...]`` inputs to ``[B, C]`` logits. Its mode, its
        parameters and their ``.grad`` are left untouched; no weight gradient is computed.
    x, y : inputs and labels (targets when ``targeted``).
    loss : ``"ce"``, ``"dlr"``, ``"cw"`` or ``callable(logits, y) -> [B]`` to maximise.
    eot_samples : draws of the model's randomness to average (EOT). Ignored (1) for deterministic
        models; ``None`` means :data:`DEFAULT_EOT_SAMPLES` for stochastic ones.
    generator : the stochastic modules draw from it during the call (via
        :func:`robustcompress.nn.use_generator`); the global RNG is then not used.
    targeted : maximise ``-loss(logits, y)`` (move towards the target ``y``).
    max_rows : most rows per forward when draws are vectorised (memory bound); ``None``: all
        ``eot_samples`` copies of the batch in one forward on an accelerator (halved on
        out-of-memory errors), at most :data:`CPU_MAX_ROWS` rows on CPU.
    return_logits : also return the logits averaged over the draws (detached).

    Returns
    -------
    ``(objective [B], grad [B, ...])`` (plus ``logits [B, C]`` if asked): the objective is the
    value being maximised (the loss, or minus it when targeted), averaged over draws; ``grad`` is
    its average gradient. The per-sample losses are summed before differentiation, so each
    sample's gradient is independent of the batch. Inputs the model output does not depend on get
    a zero gradient; NaN gradients are returned as they are (see the masking checks).

    Notes
    -----
    EOT is vectorised by stacking ``c`` copies of the batch in one forward when every stochastic
    module draws per sample (``granularity="sample"``), and looped one draw per forward otherwise
    (a ``"batch"`` module shares one draw across the whole forward, so stacked copies would not be
    independent draws).
    """
    fn = resolve_loss(loss)
    n = resolve_draws(model, eot_samples, DEFAULT_EOT_SAMPLES)
    xi = x.detach().requires_grad_(True)
    batch = x.shape[0]

    def run(c: int):
        obj, logits = _objective_of_copies(model, fn, xi, y, c, targeted)
        if obj.requires_grad:
            (g,) = torch.autograd.grad(obj.sum(), xi, allow_unused=True)
        else:  # the output does not depend differentiably on the input (e.g. detached inside)
            g = None
        g = torch.zeros_like(xi) if g is None else g
        lg = logits.detach().view(c, batch, -1).sum(0) if return_logits else None
        return obj.detach().view(c, batch).sum(0), g, lg

    with generator_scope(model, generator), torch.enable_grad():
        parts = over_draws(model, batch, n, max_rows, run, x.device)
    obj_mean, grad_mean = sum_parts(parts, 0), sum_parts(parts, 1)
    if n > 1:
        obj_mean, grad_mean = obj_mean / n, grad_mean / n
    if return_logits:
        return obj_mean, grad_mean, sum_parts(parts, 2) / n
    return obj_mean, grad_mean


@torch.no_grad()
def objective(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: Union[str, LossFn] = "ce",
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    targeted: bool = False,
    max_rows: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker objective and mean logits of :func:`input_gradient`, without the gradient."""
    fn = resolve_loss(loss)
    n = resolve_draws(model, eot_samples, DEFAULT_EOT_SAMPLES)
    batch = x.shape[0]

    def run(c: int):
        obj, logits = _objective_of_copies(model, fn, x, y, c, targeted)
        return obj.view(c, batch).sum(0), logits.view(c, batch, -1).sum(0)

    with generator_scope(model, generator):
        parts = over_draws(model, batch, n, max_rows, run, x.device)
    return sum_parts(parts, 0) / n, sum_parts(parts, 1) / n


@torch.no_grad()
def draw_logits(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """Logits of each draw (at least float32), shape ``[n, B, C]`` (``n = 1`` for deterministic models).

    ``batch_size`` bounds the rows per forward (inputs times stacked copies).
    """
    n = resolve_draws(model, mc_samples, DEFAULT_MC_SAMPLES)
    batch = x.shape[0]
    rows = batch_size if batch_size is not None else None
    chunks = [x] if rows is None or rows >= batch else list(x.split(int(rows)))

    def run(c: int):
        parts = [
            _at_least_float32(model(repeat_rows(xc, c))).view(c, xc.shape[0], -1)
            for xc in chunks
        ]
        return (torch.cat(parts, dim=1),)

    with generator_scope(model, generator):
        out = over_draws(model, min(batch, rows or batch), n, rows, run, x.device)
    return torch.cat([o[0] for o in out], dim=0)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def mc_predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """Mean softmax probabilities ``[B, C]`` over ``mc_samples`` draws of the model's randomness.

    ``mc_samples=None`` means 1 for deterministic models and :data:`DEFAULT_MC_SAMPLES` for
    stochastic ones. Runs under ``no_grad``; the model's mode is not changed.
    """
    logits = draw_logits(model, x, mc_samples=mc_samples, generator=generator, batch_size=batch_size)
    return F.softmax(logits, dim=2).mean(0)


__all__ = [
    "CPU_MAX_ROWS", "DEFAULT_EOT_SAMPLES", "DEFAULT_MC_SAMPLES", "bcast_rows", "draw_logits",
    "generator_scope", "input_gradient", "mc_predict", "objective", "over_draws", "repeat_rows",
    "resolve_draws", "samples_vectorizable", "sum_parts",
]
