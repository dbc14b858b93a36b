"""Bytes on disk and CPU latency of pruned (sparse export) and weight-quantised (packed) models vs dense.

For LeNet-300-100, LeNet-5 and the 4-layer MNIST CNN (MNIST input shape; random weights: sizes and
timings do not depend on training, and magnitude pruning of random weights gives the same exact
per-layer counts) this measures in one run:

* ``exported bytes``: :func:`robustcompress.metrics.compression.exported_bytes` (a safetensors file
  of every module's ``export_tensors()`` -- bitmap or int16/int32 indices + float32 values for
  pruned layers, packed k-bit codes + scales for quantised ones -- and dense float32 for the rest);
* ``latency``: median batch-1 and batch-256 forward time of
  ``masked``/``fake-quant`` (the parametrised training-time model, which recomputes the mask product
  or the quantiser on every forward) and ``baked`` (parametrisations removed: a dense float model
  with the same function, i.e. what you would deploy without sparse kernels).  Neither runs sparse or
  low-bit kernels, so no speed-up is claimed: the size saving is storage only.
* ANP-VS: if :func:`robustcompress.defenses.anp_vs.export_pruned` is available, a model with half of
  its channel masks switched off is exported structurally and measured the same way (hook).

    OMP_NUM_THREADS=1 python bench/compressed_size.py            # full
    OMP_NUM_THREADS=1 python bench/compressed_size.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import copy
import datetime

import torch

from robustcompress.data.info import DatasetInfo
from robustcompress.defenses.quantization import quantize
from robustcompress.metrics.compression import exported_bytes, measure_latency
from robustcompress.models import build_model
from robustcompress.nn.masks import magnitude_prune, remove_weight_parametrizations

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple(str(i) for i in range(10)),
                    mean=(0.1307,), std=(0.3081,))


def baked(model: torch.nn.Module) -> torch.nn.Module:
    """Dense float copy with every weight parametrisation applied once and removed."""
    m = copy.deepcopy(model)
    for mod in list(m.modules()):
        remove_weight_parametrizations(mod)
    return m


def variants(dense: torch.nn.Module) -> dict[str, torch.nn.Module]:
    out = {"dense": dense}
    for sp in (0.9, 0.99):
        out[f"pruned {int(sp * 100)}%"] = magnitude_prune(copy.deepcopy(dense), sp)
    for bits in (8, 3):
        out[f"{bits}-bit"] = quantize(dense, bits)
    out["3-bit + mu-law last"] = quantize(dense, 3, mu_law_layers=1)
    out["pruned 90% + 3-bit"] = quantize(magnitude_prune(copy.deepcopy(dense), 0.9), 3)
    return out


def anp_variant(dense: torch.nn.Module):
    """Hook for the ANP-VS structural export (None when it is not available)."""
    try:
        from robustcompress.defenses.anp_vs import export_pruned  # noqa: F401
    except ImportError:
        return None
    return None  # needs an ANP-VS model with trained masks; measured in bench/anp_vs.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 10 if args.quick else 50
    torch.manual_seed(0)
    print(f"# compressed size and latency, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {datetime.date.today()}")
    print("| model | variant | exported bytes | size vs dense | latency b=1 ms (param. / baked) "
          "| latency b=256 ms (param. / baked) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in ("lenet300", "lenet5", "cnn4"):
        dense = build_model(name, MNIST).eval()
        base = exported_bytes(dense)
        for label, m in variants(dense).items():
            m.eval()
            b = exported_bytes(m)
            with torch.no_grad():
                lat1 = measure_latency(m, MNIST.shape, 1, repeats)
                lat1b = measure_latency(baked(m), MNIST.shape, 1, repeats)
                lat256 = measure_latency(m, MNIST.shape, 256, max(3, repeats // 5))
                lat256b = measure_latency(baked(m), MNIST.shape, 256, max(3, repeats // 5))
            print(f"| {name} | {label} | {b:,} | {b / base:.3f} | {lat1:.3f} / {lat1b:.3f} "
                  f"| {lat256:.2f} / {lat256b:.2f} |")
    if anp_variant(build_model("lenet5", MNIST)) is None:
        print("\nANP-VS structural export: see bench/anp_vs.py (needs trained masks).")


if __name__ == "__main__":
    main()
