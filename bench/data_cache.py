"""Dataset load time: first load (verify + decode + write cache) vs. cache hit, in one run.

Usage: OMP_NUM_THREADS=1 python bench/data_cache.py [DATASET ...] [--data-dir DIR]
Default datasets: mnist cifar10 (full CIFAR decodes 60,000 JPEGs once, about a minute on one
core). Each dataset is loaded into a fresh temporary cache, then loaded twice more from it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from robustcompress.data import load_dataset


def _time(fn):
    """``(result, wall seconds, CPU seconds of this process)``; CPU time is what an idle
    machine would show as wall time (the development box is shared and often busy)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["mnist", "cifar10"])
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as cache:
        for name in args.datasets:
            first, t_first, c_first = _time(lambda: load_dataset(name, args.data_dir,
                                                                 cache_dir=cache))
            hits = [_time(lambda: load_dataset(name, args.data_dir, cache_dir=cache))[1:]
                    for _ in range(2)]
            t_hit, c_hit = min(h[0] for h in hits), min(h[1] for h in hits)
            _, t_lim, c_lim = _time(lambda: load_dataset(name, args.data_dir, cache_dir=cache,
                                                         train_limit=1000, test_limit=500))
            n = len(first.train) + len(first.test)
            print(f"{name:16s} n={n:6d}  first {t_first:7.2f} s (cpu {c_first:6.2f})  "
                  f"cache hit {t_hit:6.3f} s (cpu {c_hit:6.3f}, x{c_first / c_hit:5.1f} less)  "
                  f"limited 1000/500 from cache {t_lim:6.3f} s (cpu {c_lim:6.3f})")


if __name__ == "__main__":
    main()
