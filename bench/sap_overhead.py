"""SAP overhead: forward and forward+backward time of SAP models vs the plain model, and the
EOT-100 input gradient of a SAP ResNet-20 on 512 CIFAR-shaped inputs.

Compares, on one batch and in one run (timings interleaved, best of ``--repeat``):

* ``plain``: the undefended model;
* ``sap exact``: :func:`robustcompress.defenses.sap.sap` with the default exact sampler;
* ``sap bernoulli``: the labelled independent-keep approximation;
* ``sap multinomial``: the same operator with ``torch.multinomial(p, r, replacement=True)`` as
  the sampler (the obvious exact implementation, for reference);

on LeNet-5 with an MNIST-shaped batch of 256 and ResNet-20 with a CIFAR-shaped batch (random
weights: timing does not depend on training). Then one EOT-100 ``input_gradient`` of SAP-100
ResNet-20 on 512 inputs (the paper: ~20 s on 8 GPUs for *one* MC sample of this backward).

    OMP_NUM_THREADS=1 python bench/sap_overhead.py            # full
    OMP_NUM_THREADS=1 python bench/sap_overhead.py --quick    # smaller, no EOT-100
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.defenses.sap import sap
from robustcompress.models import build_model
from robustcompress.nn.sap import SAP, keep_probability, num_draws

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), mean=(0.13,), std=(0.31,))
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, tuple("abcdefghij"), mean=(0.5,) * 3, std=(0.25,) * 3)


class MultinomialSAP(SAP):
    """Reference: the same operator sampled with ``torch.multinomial`` (exact, slow)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            B = h.shape[0]
            a = h.detach().reshape(B, -1).abs()
            total = a.sum(1, keepdim=True)
            p = a / torch.where(total > 0, total, torch.ones_like(total))
            r = num_draws(a.shape[1], self.frac)
            safe = torch.where(total > 0, a, torch.ones_like(a))
            idx = torch.multinomial(safe, r, replacement=True, generator=self.generator)
            drawn = torch.zeros_like(a, dtype=torch.bool).scatter_(1, idx, True) & (a > 0)
            keep = keep_probability(p, r)
            mask = torch.where(drawn, keep.reciprocal(), torch.zeros_like(keep))
        return h * mask.view_as(h)


def _variants(model: nn.Module) -> dict[str, nn.Module]:
    ref = sap(model)
    for name, m in list(ref.named_modules()):
        if isinstance(m, SAP):
            parent = ref.get_submodule(name.rpartition(".")[0])
            parent[1] = MultinomialSAP(m.frac)
    return {"plain": model, "sap exact": sap(model), "sap bernoulli": sap(model, method="bernoulli"),
            "sap multinomial": ref}


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_model(name: str, info: DatasetInfo, batch: int, repeat: int) -> list[tuple]:
    torch.manual_seed(0)
    model = build_model(name, info).eval()
    x = torch.rand(batch, *info.shape)
    variants = _variants(model)
    rows = {}
    for _ in range(repeat):  # interleave the variants so load changes hit all of them alike
        for label, m in variants.items():
            def fwd():
                with torch.no_grad():
                    m(x)

            def fwd_bwd():
                xi = x.clone().requires_grad_(True)
                torch.autograd.grad(m(xi).logsumexp(1).sum(), xi)

            f, fb = _time(fwd, 1), _time(fwd_bwd, 1)
            old = rows.get(label, (float("inf"), float("inf")))
            rows[label] = (min(old[0], f), min(old[1], fb))
    base = rows["plain"]
    return [(name, batch, label, f * 1e3, fb * 1e3, f / base[0], fb / base[1])
            for label, (f, fb) in rows.items()]


def bench_eot(batch: int, eot: int, max_rows, device: str = "cpu") -> float:
    """Seconds of one EOT-``eot`` input gradient of SAP-100 ResNet-20 on ``batch`` inputs, with
    model, data and generator on ``device`` (the same draws as before on CPU)."""
    from robustcompress.attacks import input_gradient

    dev = torch.device(device)
    torch.manual_seed(0)
    model = sap(build_model("resnet20", CIFAR).eval()).to(dev)
    x, y = torch.rand(batch, 3, 32, 32).to(dev), torch.randint(0, 10, (batch,)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    input_gradient(model, x, y, eot_samples=eot, generator=gen, max_rows=max_rows)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller batches, no EOT-100")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--eot", type=int, default=100)
    ap.add_argument("--eot-batch", type=int, default=512)
    ap.add_argument("--max-rows", type=int, default=1024, help="rows per forward in EOT stacking")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = bench_model("lenet5", MNIST, 64 if args.quick else 256, args.repeat)
    rows += bench_model("resnet20", CIFAR, 16 if args.quick else 128, max(2, args.repeat // 2))
    print(f"{'model':9s} {'batch':>5s} {'variant':16s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} "
          f"{'fwd x':>7s} {'fwd+bwd x':>9s}")
    for r in rows:
        print(f"{r[0]:9s} {r[1]:5d} {r[2]:16s} {r[3]:9.1f} {r[4]:11.1f} {r[5]:7.2f} {r[6]:9.2f}")
    if not args.quick:
        s = bench_eot(args.eot_batch, args.eot, args.max_rows)
        print(f"EOT-{args.eot} input gradient, SAP-100 ResNet-20, {args.eot_batch} CIFAR-shaped "
              f"inputs: {s:.1f} s wall ({s / args.eot:.2f} s per MC sample)")


if __name__ == "__main__":
    main()
