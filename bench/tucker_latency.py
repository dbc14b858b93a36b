"""Latency and MACs of a Tucker conv (factorized / reconstructed / sketched) versus the dense conv.

Usage::

    OMP_NUM_THREADS=1 python bench/tucker_latency.py [--threads 1] [--batch 32] [--size 16]
        [--channels 64 128] [--ranks 1.0 0.5 0.25 0.125] [--min-time 0.3] [--append]

MACs come from the library's hook-based counter (robustcompress.metrics.compression.count_macs),
i.e. the convs that really execute; latency is the median of torch.utils.benchmark's
blocked_autorange (no_grad, eval). Ratios are measured in one run on one machine; compare ratios,
not absolute times. ``--append`` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

from robustcompress.metrics.compression import count_macs
from robustcompress.nn.tucker import TuckerConv2d


def median_ms(module: nn.Module, x: torch.Tensor, min_time: float) -> float:
    module.eval()
    with torch.no_grad():
        t = benchmark.Timer("m(x)", globals={"m": module, "x": x}).blocked_autorange(
            min_run_time=min_time)
    return t.median * 1e3


def run(channels, ranks, batch, size, min_time, theta=0.9):
    rows = []
    gen = torch.Generator().manual_seed(0)
    for c in channels:
        dense = nn.Conv2d(c, c, 3, padding=1)
        x = torch.randn(batch, c, size, size, generator=gen)
        d_ms = median_ms(dense, x, min_time)
        d_macs = count_macs(nn.Sequential(dense), (c, size, size))
        rows.append((f"{c}->{c}", "dense", "-", d_macs, 1.0, d_ms, 1.0))
        for r in ranks:
            fac = TuckerConv2d.from_conv(dense, r)
            rec = TuckerConv2d.from_conv(dense, r, execution="reconstructed")
            sk = TuckerConv2d.from_conv(dense, r, theta=theta,
                                        generator=torch.Generator().manual_seed(1))
            label = "x".join(map(str, fac.ranks))
            for name, m in (("factorized", fac), ("reconstructed", rec),
                            (f"factorized theta={theta}", sk)):
                macs = count_macs(nn.Sequential(m), (c, size, size))
                ms = median_ms(m, x, min_time)
                rows.append((f"{c}->{c}", name, label, macs, macs / d_macs, ms, ms / d_ms))
    return rows


def to_markdown(rows, args) -> str:
    head = (f"## Tucker conv latency (bench/tucker_latency.py)\n\n"
            f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} "
            f"thread(s), {platform.processor() or platform.machine()}, load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, batch {args.batch}, "
            f"{args.size}x{args.size} input, 3x3 conv, padding 1. Command: `OMP_NUM_THREADS="
            f"{args.threads} python bench/tucker_latency.py {' '.join(sys.argv[1:])}`. MACs per "
            f"sample from the hook-based counter; the sketched row's MACs are one draw's.\n\n"
            "| conv | execution | Tucker rank | MACs | MACs/dense | ms | ms/dense |\n"
            "|---|---|---|---:|---:|---:|---:|\n")
    body = "".join(f"| {c} | {e} | {r} | {m:,} | {mr:.2f} | {ms:.2f} | {t:.2f} |\n"
                   for c, e, r, m, mr, ms, t in rows)
    return head + body


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    p.add_argument("--ranks", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    md = to_markdown(run(args.channels, args.ranks, args.batch, args.size, args.min_time), args)
    print(md)
    if args.append:
        path = Path(__file__).with_name("RESULTS.md")
        with path.open("a") as f:
            f.write("\n" + md)


if __name__ == "__main__":
    main()
