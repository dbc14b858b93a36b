"""A short calibration for :func:`~robustcompress.experiments.plan.plan_experiment`: how long one
training step, one input-gradient step and one forward pass of a config's base model take on the
present device.

Each kind of pass is timed on random inputs of the dataset's shape and box (no data is read), after
one warm-up pass, at a small batch and, when one pass there stays quick, at the config's batch.
The two timings give a line ``seconds = fixed + per_input * n`` (:class:`Rate`) that scales to
any batch size; a large model on a CPU is timed on a couple of inputs only and scaled linearly,
so calibrating a ResNet on a laptop takes seconds, not minutes.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

#: Smallest batch timed (2: BatchNorm refuses one input in training mode).
SMALL_BATCH = 2
#: The config's batch is timed only if one pass at it should take at most this long (seconds);
#: otherwise the largest batch that should (small batches understate a CPU's cost per input
#: by up to 2x, and leave a GPU mostly idle).
STEP_BUDGET_S = 0.3
#: Timed repetitions per batch size (after one warm-up pass; their median counts): at least
#: REPEATS, and more up to MAX_REPEATS while their total stays under TIMING_S seconds.
REPEATS = 3
MAX_REPEATS = 50
TIMING_S = 0.25
#: Iterations of the PGD call that measures an attack iteration's own overhead.
PGD_STEPS = 10
#: Attack overheads are timed only when a gradient pass on two inputs is quicker than this.
OVERHEAD_MATTERS_S = 0.05
#: A step slower than this (its warm-up call) is timed once more only.
SLOW_STEP_S = 0.5


@dataclass(frozen=True)
class Rate:
    """Seconds of one pass over a batch of ``n`` inputs: ``fixed_s + per_input_s * n``."""

    fixed_s: float
    per_input_s: float

    def batch_seconds(self, n: float) -> float:
        return self.fixed_s + self.per_input_s * n

    def seconds(self, passes: float, points: float, batch: int, rows: float = 1.0) -> float:
        """``passes`` passes over ``points`` inputs in batches of ``batch``, each input stacked
        ``rows`` times (EOT draws in one forward count as a ``rows`` times larger batch)."""
        if passes <= 0 or points <= 0:
            return 0.0
        batches = math.ceil(points / max(1, batch))
        return passes * (batches * self.fixed_s + points * rows * self.per_input_s)


@dataclass(frozen=True)
class Calibration:
    """Timed passes of a base model on one device (see the module docstring)."""

    device: str
    threads: int
    train: Rate  # forward, backward and optimizer step, training mode
    grad: Rate  # forward and backward with respect to the input, evaluation mode
    forward: Rate  # forward pass without gradient, evaluation mode
    call: Rate  # an attack call's own overhead (checks, probes, verdict), beyond its passes
    step: Rate  # an attack iteration's own overhead (projection, bookkeeping), beyond its pass
    seconds: float  # how long calibrating took

    def device_label(self) -> str:
        """``"cpu (2 threads)"`` or ``"cuda:0 (NVIDIA H200)"``."""
        if self.device.startswith("cuda") and torch.cuda.is_available():
            return f"{self.device} ({torch.cuda.get_device_name(torch.device(self.device))})"
        return f"{self.device} ({self.threads} thread{'s' if self.threads != 1 else ''})"


def calibrate(model: nn.Module, info, device: torch.device, *, train_batch: int, eval_batch: int,
              optimizer: str = "adam") -> Calibration:
    """Time ``model`` (a copy; the argument is left as it was) on ``device`` for inputs of
    ``info.shape`` in ``info.bounds``: training steps at ``train_batch``, input-gradient steps and
    forward passes at ``eval_batch`` (scaled from smaller batches, see :func:`fit_rate`)."""
    t0 = time.perf_counter()
    net = copy.deepcopy(model).to(device)
    largest = max(train_batch, eval_batch)
    gen = torch.Generator().manual_seed(0)
    lo, hi = info.bounds
    x = (lo + (hi - lo) * torch.rand((largest, *info.shape), generator=gen)).to(device)
    y = torch.randint(0, info.num_classes, (largest,), generator=gen).to(device)
    opt = (torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(net.parameters(), lr=1e-3))
    state = copy.deepcopy(net.state_dict())

    def train(n: int) -> None:
        net.train()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x[:n]), y[:n]).backward()
        opt.step()

    def grad(n: int) -> None:
        net.eval()
        xi = x[:n].clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(net(xi), y[:n]), xi)

    def forward(n: int) -> None:
        net.eval()
        with torch.no_grad():
            net(x[:n])

    rates = {}
    for name, step, target in (("train", train, train_batch), ("grad", grad, eval_batch),
                               ("forward", forward, eval_batch)):
        rates[name] = fit_rate(step, target, device)
        net.load_state_dict(state)  # timing trains nothing for real
    call, step = _attack_overheads(net.eval(), x, y, info, device, rates)
    return Calibration(str(device), torch.get_num_threads(), rates["train"], rates["grad"],
                       rates["forward"], call, step, time.perf_counter() - t0)


def _attack_overheads(net: nn.Module, x: torch.Tensor, y: torch.Tensor, info, device,
                      rates: dict) -> tuple[Rate, Rate]:
    """Seconds an attack spends besides its passes, per call (input checks, the randomness
    probe, the verdict: one FGSM call on two inputs, less its passes) and per iteration
    (projection, bookkeeping: PGD-10 on two inputs, less its passes and one call)."""
    from robustcompress.attacks import ThreatModel, run_attack

    n = min(2, len(y))
    grad, fwd = rates["grad"].batch_seconds(n), rates["forward"].batch_seconds(n)
    if grad > OVERHEAD_MATTERS_S:  # a pass this long dwarfs any overhead: not worth timing
        return Rate(0.0, 0.0), Rate(0.0, 0.0)
    threat = ThreatModel.from_spec(norm="linf", eps=0.01 * (info.bounds[1] - info.bounds[0]), info=info)
    one = time_step(lambda: run_attack("fgsm", net, x[:n], y[:n], threat), device)
    call = max(0.0, one - grad - fwd)
    ten = time_step(lambda: run_attack("pgd", net, x[:n], y[:n], threat, steps=PGD_STEPS,
                                       early_stop=False), device)
    step = max(0.0, (ten - call - fwd) / PGD_STEPS - grad)
    return Rate(call, 0.0), Rate(step, 0.0)


def affordable_batch(rate: Rate, batch: int) -> int:
    """The largest batch up to ``batch`` whose pass at ``rate`` fits :data:`STEP_BUDGET_S`."""
    return max(SMALL_BATCH, min(batch, int(STEP_BUDGET_S / max(rate.per_input_s, 1e-9))))


def grad_seconds(model: nn.Module, info, device: torch.device, n: int) -> float:
    """Seconds of one input-gradient pass of ``model`` (evaluation mode) over ``n`` random inputs
    in ``info``'s box: :func:`~robustcompress.experiments.plan.plan_experiment` compares a
    defended variant's with the base model's."""
    gen = torch.Generator().manual_seed(1)
    lo, hi = info.bounds
    x = (lo + (hi - lo) * torch.rand((n, *info.shape), generator=gen)).to(device)
    y = torch.randint(0, info.num_classes, (n,), generator=gen).to(device)
    net = model.to(device).eval()

    def step() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(net(xi), y), xi)

    return time_step(step, device)


def fit_rate(step: Callable[[int], None], target: int, device: torch.device) -> Rate:
    """The :class:`Rate` of ``step(n)`` up to batch ``target``: a probe at :data:`SMALL_BATCH`,
    then, if one pass at ``target`` fits :data:`STEP_BUDGET_S`, the line through ``target / 4``
    and ``target`` (the cost per input of a CPU jumps between tiny and ordinary batches, so the
    probe itself is not used); otherwise the largest affordable batch, scaled in proportion."""
    n0 = max(1, min(target, SMALL_BATCH))
    t0 = time_step(lambda: step(n0), device)
    affordable = int(STEP_BUDGET_S / max(t0 / n0, 1e-9))
    if affordable < target:
        n = max(n0, affordable)
        return Rate(0.0, (time_step(lambda: step(n), device) if n > n0 else t0) / n)
    n1 = max(n0, target // 4)
    t1 = time_step(lambda: step(n1), device) if n1 > n0 else t0
    t2 = time_step(lambda: step(target), device) if target > n1 else t1
    slope = (t2 - t1) / (target - n1) if target > n1 else 0.0
    if slope <= 0:  # noise swamped the difference (or one size only): in proportion
        return Rate(0.0, t2 / target)
    return Rate(max(0.0, t1 - slope * n1), slope)


def time_step(fn: Callable[[], None], device: torch.device) -> float:
    """Median seconds of ``fn()`` after one warm-up call: at least :data:`REPEATS` calls (one if
    the warm-up took over :data:`SLOW_STEP_S`), more (up to :data:`MAX_REPEATS`) while they add up
    to under :data:`TIMING_S`, so that a step of a millisecond is not judged by three samples of
    a busy machine (waits for a GPU each time)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    least = 1 if time.perf_counter() - t0 > SLOW_STEP_S else REPEATS
    times: list[float] = []
    while len(times) < least or (sum(times) < TIMING_S and len(times) < MAX_REPEATS):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
