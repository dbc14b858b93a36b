"""Attack throughput: robustcompress FGSM / PGD-10 against a bare input-gradient loop, and EOT cost.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python bench/attack_throughput.py [--threads 2] [--reps 5]
        [--models lenet5,resnet20] [--batch 256] [--append bench/RESULTS.md]

What is timed (wall clock, ``time.perf_counter``), per model, batch 256, random inputs in [0, 1]
and random labels, untrained weights (throughput does not depend on them because early stopping
is switched off), parameters left with ``requires_grad=True`` as a user's model would be:

* **bare**: the lower bound a user could hand-write: ``steps`` x (forward + ``autograd.grad``
  with respect to the input only), sign step, projection, plus one final forward for the
  predictions (robust accuracy needs it; every library pays it);
* **robustcompress**: ``run_attack("fgsm" | "pgd", ..., early_stop=False)``, which additionally
  evaluates the clean point and every iterate (best-iterate tracking) and re-judges the result.

The tools run interleaved in every repetition (bare, ours, bare, ours, ...) after one warm-up,
so background load hits both alike; the ratio of medians and the ratio of bests are printed.

EOT: ``input_gradient(model, x, y, eot_samples=n)`` on a stochastic model (per-sample Gaussian
input noise, vectorised by stacking n copies of the batch) against n separate plain
forward+backward passes of the same model on the batch (the naive EOT loop); goal <= 1.3x.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.attacks import ThreatModel, input_gradient, run_attack
from robustcompress.data.info import DatasetInfo
from robustcompress.models import build_model

SHAPES = {"lenet5": ("mnist", (1, 28, 28)), "resnet20": ("cifar10", (3, 32, 32))}
EPS = {"lenet5": 0.3, "resnet20": 8 / 255}


class GaussianInput(nn.Module):
    """Per-sample Gaussian input noise: a minimal stochastic layer for the EOT benchmark."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma
        self.stochastic = True
        self.generator = None
        self.granularity = "sample"

    def forward(self, x):
        gdev = self.generator.device if self.generator is not None else x.device
        return x + self.sigma * torch.randn(x.shape, generator=self.generator, device=gdev).to(x.device)


def bare_fgsm(model, x, y, eps):
    xa = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xa), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xa)
    xa = (x + eps * g.sign()).clamp(0, 1)
    with torch.no_grad():
        return (model(xa).argmax(1) == y).float().mean().item()


def bare_pgd(model, x, y, eps, steps, gen):
    alpha = 2.5 * eps / steps
    xa = (x + eps * (2 * torch.rand(x.shape, generator=gen, device=gen.device).to(x.device)
                     - 1)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        return (model(xa).argmax(1) == y).float().mean().item()


def bare_apgd(model, x, y, eps, steps, gen):
    """Hand-written APGD-CE (Linf, one run): the reference's start, momentum step and checkpoint
    rule, updated with ``torch.where`` (no host syncs in the loop), plus one final forward."""
    n, rows = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
    first, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    checks, k, at = set(), first, first
    while at <= steps:
        checks.add(at)
        k = max(k - shrink, least)
        at += k

    def proj(z):
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)

    def loss_grad(xa):
        xa = xa.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="none")
        return xa.detach(), loss.detach(), torch.autograd.grad(loss.sum(), xa)[0]

    t = 2 * torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) - 1
    xa, f, g = loss_grad(proj(x + eps * t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(rows)))
    x_max, f_max, g_max, x_prev, hist = xa, f, g, xa, [f]
    eta = torch.full((n,), 2.0 * eps, device=x.device).view(rows)
    last, f_at, reduced = 0, f_max, torch.ones(n, dtype=torch.bool, device=x.device)
    for i in range(1, steps + 1):
        a = 0.75 if i > 1 else 1.0
        z = proj(xa + eta * g.sign())
        x_prev, (xa, f, g) = xa, loss_grad(proj(xa + a * (z - xa) + (1 - a) * (xa - x_prev)))
        hist.append(f)
        up = f > f_max
        x_max, g_max = torch.where(up.view(rows), xa, x_max), torch.where(up.view(rows), g, g_max)
        f_max = torch.where(up, f, f_max)
        if i in checks:
            k = i - last
            up_count = (torch.stack(hist[-k:]) > torch.stack(hist[-k - 1:-1])).sum(0)
            reduce = (up_count <= 0.75 * k) | (~reduced & (f_at >= f_max))
            reduced, f_at, last = reduce, f_max, i
            eta = torch.where(reduce.view(rows), eta / 2, eta)
            xa, g = torch.where(reduce.view(rows), x_max, xa), torch.where(reduce.view(rows), g_max, g)
    with torch.no_grad():
        return (model(x_max).argmax(1) == y).float().mean().item()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(tools: dict, reps: int) -> dict:
    """Interleaved timing: one warm-up round, then ``reps`` rounds over all tools."""
    times = {k: [] for k in tools}
    for r in range(reps + 1):
        for name, fn in tools.items():
            t, _ = timed(fn)
            if r > 0:
                times[name].append(t)
    return times


def info_for(name: str) -> DatasetInfo:
    ds, shape = SHAPES[name]
    return DatasetInfo(name=ds, shape=shape, num_classes=10,
                       class_names=tuple(str(i) for i in range(10)))


def bench_model(name: str, batch: int, reps: int, steps: int = 10) -> list[dict]:
    info = info_for(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(name, info).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch,) + info.shape, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    eps = EPS[name]
    threat = ThreatModel.from_spec("linf", eps, info)
    rows = []
    for attack, bare, ours in [
        ("FGSM", lambda: bare_fgsm(model, x, y, eps),
         lambda: run_attack("fgsm", model, x, y, threat)),
        (f"PGD-{steps}", lambda: bare_pgd(model, x, y, eps, steps, torch.Generator().manual_seed(1)),
         lambda: run_attack("pgd", model, x, y, threat, steps=steps, early_stop=False,
                            generator=torch.Generator().manual_seed(1))),
    ]:
        t = compare({"bare": bare, "robustcompress": ours}, reps)
        rows.append(summarise(name, attack, batch, t))
    return rows


def summarise(model: str, attack: str, batch: int, t: dict) -> dict:
    med = {k: statistics.median(v) for k, v in t.items()}
    best = {k: min(v) for k, v in t.items()}
    return {
        "model": model, "attack": attack,
        "bare_img_s_median": batch / med["bare"], "bare_img_s_best": batch / best["bare"],
        "ours_img_s_median": batch / med["robustcompress"],
        "ours_img_s_best": batch / best["robustcompress"],
        "ratio_median": med["robustcompress"] / med["bare"],
        "ratio_best": best["robustcompress"] / best["bare"],
    }


def bench_eot(name: str, batch: int, n: int, reps: int) -> dict:
    info = info_for(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(GaussianInput(0.05), build_model(name, info)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch,) + info.shape, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    noise_gen = torch.Generator().manual_seed(2)

    def naive():
        total = torch.zeros_like(x)
        for _ in range(n):
            xa = x.clone().requires_grad_(True)
            model[0].generator = noise_gen
            loss = F.cross_entropy(model(xa), y, reduction="sum")
            total += torch.autograd.grad(loss, xa)[0]
            model[0].generator = None
        return total / n

    def ours():
        return input_gradient(model, x, y, eot_samples=n, generator=noise_gen)

    t = compare({"bare": naive, "robustcompress": ours}, reps)
    row = summarise(name, f"EOT-{n} gradient", batch, t)
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | attack | bare img/s (median / best) | robustcompress img/s (median / best) "
            "| time ratio median | time ratio best |\n|---|---|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['model']} | {r['attack']} | {r['bare_img_s_median']:.0f} / {r['bare_img_s_best']:.0f} "
        f"| {r['ours_img_s_median']:.0f} / {r['ours_img_s_best']:.0f} | {r['ratio_median']:.3f}x "
        f"| {r['ratio_best']:.3f}x |\n" for r in rows)
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--eot", default="lenet5:10:256,resnet20:4:64",
                    help="model:n:batch triples for the EOT cost")
    ap.add_argument("--append", default=None, help="append the markdown section to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, python "
           f"{platform.python_version()}, {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs; load average at start {load0[0]:.2f} / {load0[1]:.2f} / "
           f"{load0[2]:.2f}")
    print(env)
    rows = []
    for name in args.models.split(","):
        for r in bench_model(name, args.batch, args.reps):
            rows.append(r)
            print(f"{r['model']:>9} {r['attack']:>8}: bare {r['bare_img_s_median']:.0f} img/s, "
                  f"ours {r['ours_img_s_median']:.0f} img/s, ratio median {r['ratio_median']:.3f}x "
                  f"best {r['ratio_best']:.3f}x", flush=True)
    eot_rows = []
    for spec in filter(None, args.eot.split(",")):
        name, n, batch = spec.split(":")
        r = bench_eot(name, int(batch), int(n), args.reps)
        eot_rows.append(r)
        print(f"{name:>9} EOT-{n} (batch {batch}): ours / {n} plain passes = "
              f"{r['ratio_median']:.3f}x (median), {r['ratio_best']:.3f}x (best)", flush=True)
    load1 = os.getloadavg()
    text = (
        f"\n## Attack throughput (bench/attack_throughput.py, {started})\n\n"
        f"Command: `OMP_NUM_THREADS={args.threads} .venv/bin/python bench/attack_throughput.py "
        f"--threads {args.threads} --reps {args.reps} --batch {args.batch}`. {env}; at end "
        f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}. Untrained zoo models, random inputs, "
        "early stopping off; interleaved repetitions after one warm-up. Ratio = robustcompress "
        "time / bare loop time (lower is better; goal <= 1.05x).\n\n"
        + table(rows)
        + "\nEOT cost: `input_gradient(eot_samples=n)` (copies stacked in one forward) against n "
          "plain forward+backward passes (goal <= 1.3x):\n\n"
        + table(eot_rows)
    )
    print(text)
    if args.append:
        with open(Path(args.append), "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
