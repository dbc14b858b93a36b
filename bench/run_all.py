"""The performance suite: every bench of the project in one run, appended to bench/RESULTS.md.

Sub-benches (each run in this process with its own small arguments under ``--quick``, its
printed ratios captured; a missing or failing script is reported, never fatal):

* attack throughput vs a bare loop, and EOT efficiency (bench/attack_throughput.py);
* factorized Tucker vs dense conv latency (bench/tucker_latency.py);
* SAP overhead (bench/sap_overhead.py);
* packed / pruned model size and latency (bench/compressed_size.py);
* training throughput (bench/train_throughput.py);
* training options of ``fit`` on this machine: channels_last, AMP (bfloat16 autocast on CPU),
  torch.compile against plain eager, same steps (this file, :func:`train_options`);
* scaling of sharded evaluation from 1 to 2 gloo processes (bench/sharded_eval.py, which
  launches its own processes);
* peer libraries (torchattacks, foolbox, ART): timed against our PGD on the same model and
  inputs only when importable; they are never dependencies, so usually "not installed, skipped".

Usage: python bench/run_all.py [--quick] [--only NAME ...] [--no-append] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import io
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

#: name -> (script, arguments for --quick, arguments for a full run)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "attack_throughput": ("attack_throughput.py",
                          ["--reps", "2", "--batch", "64", "--models", "lenet5",
                           "--eot", "lenet5:10:64"], []),
    "tucker_latency": ("tucker_latency.py",
                       ["--channels", "64", "--ranks", "1.0", "0.5", "0.25", "--min-time", "0.1"], []),
    # EOT-100 of a SAP ResNet-20 on 512 inputs takes hours on a 2-core CPU (about 1.5 min per
    # draw, measured): the full run measures EOT-3 and reports the time per draw.
    "sap_overhead": ("sap_overhead.py", ["--quick", "--repeat", "2"], ["--eot", "3"]),
    "compressed_size": ("compressed_size.py", ["--quick"], []),
    "train_throughput": ("train_throughput.py", ["--steps", "8", "--batch", "64"], []),
}


def load_script(path: Path):
    """Import a bench script as a module (None if the file does not exist)."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_script(name: str, script: str, args: list[str]) -> tuple[str, str, float]:
    """Run ``script``'s ``main()`` with ``args`` in this process; returns (status, output, s).

    The thread count is restored afterwards (scripts may change it)."""
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    buf = io.StringIO()
    try:
        mod = load_script(HERE / script)
        if mod is None:
            return "missing", f"bench/{script} not found (not written yet); skipped", 0.0
        if not hasattr(mod, "main"):
            return "missing", f"bench/{script} has no main(); skipped", 0.0
        argv = sys.argv
        sys.argv = [str(HERE / script), *args]
        try:
            with contextlib.redirect_stdout(buf):
                mod.main()
        finally:
            sys.argv = argv
        status = "ok"
    except SystemExit as e:
        status = "ok" if not e.code else f"exit {e.code}"
    except Exception as e:  # a broken sub-bench must not stop the suite
        status = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        buf.write("\n" + traceback.format_exc(limit=3))
    finally:
        torch.set_num_threads(threads)
    return status, buf.getvalue().strip(), time.perf_counter() - t0


def train_options(quick: bool) -> str:
    """Images/s of ``fit`` with each speed option against plain eager, same data and steps.

    LeNet-5 on MNIST-shaped synthetic data, batch 128, Adam; a warm-up epoch (which includes the
    compilation for ``compile``), then the best of two timed epochs. Also reports how far each option's weights
    end from eager's after the same steps (0 would mean bit-identical)."""
    from robustcompress.data.info import Dataset, DatasetInfo, Split
    from robustcompress.errors import ConfigError
    from robustcompress.models import build_model
    from robustcompress.training import TrainConfig, fit

    steps, batch = (8, 128) if quick else (30, 128)
    g = torch.Generator().manual_seed(0)
    info = DatasetInfo("mnist", (1, 28, 28), 10, tuple(str(i) for i in range(10)))
    n = steps * batch
    ds = Dataset(info, Split(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)),
                 Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)))
    variants = {"eager": {}, "channels_last": {"channels_last": True}, "amp (bf16 autocast)": {"amp": True},
                "compile": {"compile": True}}
    rows, ref = [], None
    for label, opts in variants.items():
        torch.manual_seed(0)
        model = build_model("lenet5", info)
        cfg = dict(batch_size=batch, max_batches_per_epoch=steps, hflip=False, **opts)
        try:
            t0 = time.perf_counter()
            fit(model, ds, TrainConfig(epochs=1, **cfg), progress=False)
            warm = time.perf_counter() - t0
            secs = float("inf")
            for rep in range(2):  # best of two timed epochs (the machine is shared)
                t0 = time.perf_counter()
                fit(model, ds, TrainConfig(epochs=1, seed=1 + rep, **cfg), progress=False)
                secs = min(secs, time.perf_counter() - t0)
        except ConfigError as e:
            rows.append(f"| {label} | - | - | - | {e} |")
            continue
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ref is None:
            ref, base = sd, secs
        diff = max(float((sd[k] - ref[k]).abs().max()) for k in sd)
        rows.append(f"| {label} | {steps * batch / secs:.0f} | {base / secs:.2f}x | {warm:.1f} | "
                    f"{diff:.1e} |")
    head = (f"fit on LeNet-5, MNIST-shaped synthetic data, batch {batch}, {steps} timed steps "
            "after a warm-up epoch (best of 2)\n\n| option | images/s | speed vs eager | warm-up s | "
            "max abs weight diff vs eager |\n|---|---:|---:|---:|---:|")
    return head + "\n" + "\n".join(rows)


def peer_libraries(quick: bool) -> str:
    """Time torchattacks / foolbox / ART PGD against ours when importable; else say skipped."""
    lines = []
    for mod in ("torchattacks", "foolbox", "art"):
        if importlib.util.find_spec(mod) is None:
            lines.append(f"{mod}: not installed, skipped")
            continue
        try:
            lines.append(_peer_pgd(mod, 64 if quick else 256))
        except Exception as e:  # an installed but incompatible version
            lines.append(f"{mod}: installed but failed ({type(e).__name__}: {e}); skipped")
    return "\n".join(lines)


def _peer_pgd(mod: str, batch: int) -> str:
    """PGD-10 Linf 0.3 through ``mod`` and through robustcompress on the same model and inputs:
    time ratio and agreement of the robust accuracy."""
    from robustcompress.attacks import ThreatModel, run_attack
    from robustcompress.data.info import DatasetInfo
    from robustcompress.models import build_model

    info = DatasetInfo("mnist", (1, 28, 28), 10, tuple(str(i) for i in range(10)))
    torch.manual_seed(0)
    model = build_model("lenet5", info).eval()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    t0 = time.perf_counter()
    ours = run_attack("pgd", model, x, y, ThreatModel.from_spec(norm="linf", eps=0.3, info=info),
                      steps=10, step_size=0.03, generator=torch.Generator().manual_seed(0))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mod == "torchattacks":
        import torchattacks

        xa = torchattacks.PGD(model, eps=0.3, alpha=0.03, steps=10)(x, y)
    elif mod == "foolbox":
        import foolbox

        fm = foolbox.PyTorchModel(model, bounds=(0, 1))
        _, xa, _ = foolbox.attacks.LinfPGD(steps=10, abs_stepsize=0.03)(fm, x, y, epsilons=0.3)
    else:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, clip_values=(0, 1))
        xa = torch.as_tensor(ProjectedGradientDescent(clf, eps=0.3, eps_step=0.03, max_iter=10)
                             .generate(x.numpy()))
    t_peer = time.perf_counter() - t0
    with torch.no_grad():
        acc_peer = float((model(xa).argmax(1) == y).float().mean())
    acc_ours = 1.0 - float(ours.success.float().mean())
    return (f"{mod}: PGD-10 on {batch} inputs {t_peer:.2f} s vs ours {t_ours:.2f} s "
            f"(ours/peer {t_ours / t_peer:.2f}x); robust accuracy peer {acc_peer:.3f} vs ours "
            f"{acc_ours:.3f}")


def environment() -> str:
    load = os.getloadavg()
    return (f"torch {torch.__version__}, device cpu" +
            (f" (+ {torch.cuda.device_count()} CUDA: {torch.cuda.get_device_name(0)})"
             if torch.cuda.is_available() else "") +
            f", {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), python {platform.python_version()}, "
            f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes in every sub-bench")
    ap.add_argument("--only", nargs="*", default=None,
                    help="subset: " + ", ".join([*SUITE, "train_options", "sharded_eval", "peers"]))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-append", action="store_true", help="print only, do not touch RESULTS.md")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    want = (lambda k: a.only is None or k in a.only)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env0 = environment()
    print(env0, flush=True)
    parts: list[str] = []
    t_all = time.perf_counter()
    for name, (script, quick_args, full_args) in SUITE.items():
        if not want(name):
            continue
        args = quick_args if a.quick else full_args
        status, out, secs = run_script(name, script, args)
        print(f"\n### {name} ({status}, {secs:.0f} s)\n{out}", flush=True)
        cmd = f"python bench/{script} {' '.join(args)}".strip()
        parts.append(f"### {name}: {status} ({secs:.0f} s)\n\n`{cmd}`\n\n```\n{out}\n```\n")
    for name, fn, script in (("train_options", train_options, "run_all.py"),
                             ("sharded_eval", None, "sharded_eval.py"),
                             ("peers", peer_libraries, "run_all.py")):
        if not want(name):
            continue
        t0 = time.perf_counter()
        try:
            if name == "sharded_eval":
                mod = load_script(HERE / script)
                res = mod.run(quick=a.quick)
                out = mod.format_result(res)
            else:
                out = fn(a.quick)
            status = "ok"
        except Exception as e:
            status, out = f"failed: {type(e).__name__}", traceback.format_exc(limit=3)
        secs = time.perf_counter() - t0
        print(f"\n### {name} ({status}, {secs:.0f} s)\n{out}", flush=True)
        parts.append(f"### {name}: {status} ({secs:.0f} s)\n\n{out}\n")
    env1 = environment()
    text = (f"\n## Performance suite (bench/run_all.py{' --quick' if a.quick else ''}, {started})\n\n"
            f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
            f".venv/bin/python bench/run_all.py{' --quick' if a.quick else ''}`, "
            f"{time.perf_counter() - t_all:.0f} s in all. At start: {env0}. At end: load average "
            f"{env1.rsplit('load average ', 1)[1]}. Ratios are measured within this one run; the "
            "machine is shared, so absolute numbers are lower bounds.\n\n" + "\n".join(parts))
    if not a.no_append:
        with open(a.results, "a") as fh:
            fh.write(text)
        print(f"\nappended to {a.results}")


if __name__ == "__main__":
    main()
