"""Our ``standard`` protocol against the reference AutoAttack (standard version), same model and points.

Trains a LeNet-5 on MNIST (seeded, ``--epochs`` epochs on ``--train-limit`` images), or loads a
robustcompress checkpoint (``--checkpoint``, e.g. the base ResNet-20 of a ``sap-cifar10-resnet20-cpu``
run, with ``--dataset cifar10``), takes the first ``--points`` class-stratified test points and
runs, on the same model and points under Linf ``--eps`` (a number or ``2/255``):

* ours: :func:`robustcompress.attacks.standard.evaluate_standard` (APGD-CE, APGD-T, FAB-T, Square
  5,000 queries; masking checks off, as AutoAttack has none);
* the reference: ``AutoAttack(model, norm='Linf', eps=eps, version='standard', seed=0)`` from the
  ``pyautoattack`` package (a repackaging of fra31/auto-attack). It is not a dependency of the
  project: ``pip install --no-deps --target /tmp/aa-deps pyautoattack`` and put that folder on
  ``PYTHONPATH``; without it only ours is reported.

Printed: clean and robust accuracy of each, their difference in points, the number of points on
which the two verdicts disagree, and wall-clock times and their ratio.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=/tmp/aa-deps python bench/autoattack_agreement.py [--points 1000]
       ... bench/autoattack_agreement.py --dataset cifar10 --eps 2/255 --points 200 \
           --checkpoint runs/sap-cifar10-resnet20-cpu/train/base-<hash>/model
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import time

import torch

from robustcompress.attacks import ThreatModel
from robustcompress.attacks.standard import evaluate_standard
from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit, load_checkpoint


def trained_lenet(epochs: int, train_limit: int, device: str):
    torch.manual_seed(0)
    ds = load_dataset("mnist", train_limit=train_limit, test_limit=10000)
    model = build_model("lenet5", ds.info).to(device)
    fit(model, ds, TrainConfig(epochs=epochs, batch_size=64, seed=0), device=device, progress=False)
    return model.eval().requires_grad_(False), ds


def ours(model, x, y, threat):
    t0 = time.perf_counter()
    rep = evaluate_standard(model, x, y, threat, checks=False, progress=False,
                            generator=torch.Generator(device=x.device).manual_seed(0))
    robust = torch.as_tensor(rep.per_sample["robust"]).bool().cpu()
    return robust, time.perf_counter() - t0


def reference(model, x, y, eps: float, batch_size: int):
    from pyautoattack import AutoAttack

    logging.disable(logging.INFO)
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=x.device)
    t0 = time.perf_counter()
    adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    if isinstance(adv, tuple):  # pyautoattack returns (x_adv, ...) where fra31's returns x_adv
        adv = adv[0]
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).cpu()
    # the reference's points must lie in the ball and the box for its number to count
    assert float((adv - x).abs().amax()) <= eps + 1e-5 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    return robust, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--eps", default="0.1", help="Linf radius: a number or a fraction such as 2/255")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--checkpoint", default=None, help="a robustcompress checkpoint (default: train LeNet-5 on MNIST)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=60000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    num, _, den = a.eps.partition("/")
    a.eps = float(num) / float(den or 1)
    if a.checkpoint is None:
        model, ds = trained_lenet(a.epochs, a.train_limit, a.device)
    else:
        model = load_checkpoint(a.checkpoint, device=a.device).requires_grad_(False)
        ds = load_dataset(a.dataset, train_limit=100, test_limit=10000)
    part = ds.test.sample(a.points)
    x, y = part.x.to(a.device), part.y.to(a.device)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    threat = ThreatModel.from_spec("linf", a.eps, ds.info)
    print(f"{a.dataset} {type(model).__name__}: torch {torch.__version__}, {platform.processor() or platform.machine()}, device {a.device}, "
          f"threads {torch.get_num_threads()}, points {a.points}, eps {a.eps}, clean {clean:.2%}")
    r_ours, t_ours = ours(model, x, y, threat)
    print(f"ours (standard):      robust {r_ours.float().mean():.2%}  time {t_ours:.1f} s")
    if importlib.util.find_spec("pyautoattack") is None:
        print("pyautoattack not found: pip install --no-deps --target /tmp/aa-deps pyautoattack")
        return
    r_ref, t_ref = reference(model, x, y, a.eps, a.batch_size)
    print(f"reference AutoAttack: robust {r_ref.float().mean():.2%}  time {t_ref:.1f} s")
    diff = 100 * float(r_ours.float().mean() - r_ref.float().mean())
    print(f"difference {diff:+.2f} points; verdicts disagree on {int((r_ours != r_ref).sum())} "
          f"points; time ours / reference {t_ours / t_ref:.2f}")


if __name__ == "__main__":
    main()
