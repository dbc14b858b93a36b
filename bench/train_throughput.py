"""Training throughput (images/s) of the fit loop's step: LeNet-5 on MNIST-shaped data and
ResNet-20 on CIFAR-shaped data, batch 128, synthetic tensors (the loaders are benchmarked in
bench/data_cache.py).

Measures the same work ``robustcompress.training.fit`` does per batch (index the shuffled batch,
forward, cross-entropy, backward, optimizer step) through ``fit`` itself, with
``max_batches_per_epoch`` limiting the steps, no test split and no checkpoints. The first epoch is
a warm-up; the second is timed.

Usage: python bench/train_throughput.py [--steps 40] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from robustcompress.data.info import Dataset, DatasetInfo, Split
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit


def synthetic(name: str, shape: tuple[int, ...], n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    info = DatasetInfo(name, shape, 10, tuple(str(i) for i in range(10)))
    train = Split(torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    empty = Split(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.long))
    return Dataset(info, train, empty)


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model_name: str, ds: Dataset, steps: int, batch: int,
                      optimizer: str, *, device=None, objective=None,
                      warmup_steps: int | None = None, **opts) -> float:
    """Images/s of ``steps`` fit steps after a warm-up epoch of ``warmup_steps`` (default
    ``steps``) steps; ``opts`` are further TrainConfig fields (amp, channels_last, hflip...)."""
    torch.manual_seed(0)
    model = build_model(model_name, ds.info)
    cfg = {**dict(batch_size=batch, optimizer=optimizer, lr=0.01, hflip=False), **opts}
    run = dict(objective=objective, device=device, progress=False)
    fit(model, ds, TrainConfig(epochs=1, max_batches_per_epoch=warmup_steps or steps, **cfg),
        **run)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    fit(model, ds, TrainConfig(epochs=1, seed=1, max_batches_per_epoch=steps, **cfg), **run)
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, batch {a.batch}, {a.steps} steps")
    n = a.steps * a.batch
    rows = [("lenet5", synthetic("mnist", (1, 28, 28), n), "adam"),
            ("resnet20", synthetic("cifar10", (3, 32, 32), n), "sgd")]
    for name, ds, opt in rows:
        ips = images_per_second(name, ds, a.steps, a.batch, opt)
        len_epoch = 60000 if ds.info.name == "mnist" else 50000
        print(f"{name:9s} on {ds.info.name:8s}: {ips:8.0f} images/s "
              f"(one {len_epoch}-image epoch ~ {len_epoch / ips / 60:.1f} min)")


if __name__ == "__main__":
    main()
