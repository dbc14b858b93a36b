"""The GPU path in one call (issue #17): attacks vs bare loops, SAP, ResNet-20 epochs, EOT-100.

Usage (the device machine's one-call command is in DEVELOPERS.md)::

    python3 bench/gpu.py --tests --out "$OUT"                                 # everything, GPU
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu.py --device cpu --quick     # proves it, ~1 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu.py --device cpu --smoke     # what the test runs

Parts, each on ``--device`` (default: cuda if available), each printing ``RESULT <part>: ...``
(or ``FAILED`` / ``SKIPPED``) and none stopping the others:

* ``pgd-10``, ``pgd-40``, ``apgd-N``: ``run_attack`` (early stop off) against the bare
  hand-written loops of bench/attack_throughput.py on an untrained CIFAR-10 ResNet-20, batch 1024,
  interleaved repetitions after one warm-up (its ``compare``/``summarise``); goal <= 1.05x;
* ``sap``: forward of the exact SAP-100 ResNet-20 vs the plain forward (goal <= 3x);
* ``train``: a ResNet-20 standard CIFAR-10 epoch through ``fit`` (SGD, batch 128, flips; amp and
  channels_last on CUDA), bench/train_throughput.py's ``images_per_second`` (goal < 3 s);
* ``eot``: one EOT-100 input gradient of SAP ResNet-20 on 512 inputs (bench/sap_overhead.py);
* ``train-at``: a PGD-7 adversarial-training epoch (eps 8/255, step 2/255; float32, channels_last);
* ``tests`` (``--tests``): the pytest suite in a subprocess with the time left, summary line.

Real CIFAR-10 (``load_dataset("cifar10")``) is used when found, else random CIFAR-shaped tensors
(said in the output; timing does not depend on the values). ``--budget-s`` cuts a running part
off (SIGALRM) and starts no new one once spent. The end is a Markdown block for bench/RESULTS.md
(also ``--out DIR``/results.md, with pytest.log).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from attack_throughput import EPS, bare_apgd, bare_pgd, compare, info_for, summarise  # noqa: E402
from sap_overhead import _time, bench_eot  # noqa: E402
from train_throughput import images_per_second, synthetic  # noqa: E402

from robustcompress.attacks import ThreatModel, run_attack  # noqa: E402
from robustcompress.data.info import Dataset, Split  # noqa: E402
from robustcompress.defenses.sap import sap  # noqa: E402
import robustcompress.attacks.seeds as seeds_module  # noqa: E402
import robustcompress.nn.sap as sap_module  # noqa: E402
from robustcompress.attacks.seeds import SampleNoise  # noqa: E402
from robustcompress.models import build_model  # noqa: E402

#: sizes per mode; the command-line overrides win.
PRESETS = {
    "full": dict(batch=1024, reps=5, pgd_steps=(10, 40), apgd_steps=100, sap_batch=1024,
                 sap_repeat=5, epoch_images=50000, warmup_steps=20, at_images=50000,
                 at_warmup_steps=3, train_batch=128, eot=100, eot_batch=512, min_part_s=15.0),
    "quick": dict(batch=16, reps=2, pgd_steps=(10, 40), apgd_steps=20, sap_batch=16,
                  sap_repeat=3, epoch_images=512, warmup_steps=2, at_images=128,
                  at_warmup_steps=1, train_batch=128, eot=10, eot_batch=16, min_part_s=2.0),
    "smoke": dict(batch=4, reps=1, pgd_steps=(10, 40), apgd_steps=10, sap_batch=4,
                  sap_repeat=1, epoch_images=64, warmup_steps=1, at_images=32,
                  at_warmup_steps=1, train_batch=16, eot=4, eot_batch=4, min_part_s=1.0),
}
CIFAR_EPOCH = 50000


class OutOfBudget(Exception):
    """Raised by the alarm when ``--budget-s`` is spent inside a part."""


class Ctx:
    """What the parts share: device, sizes, data, and the rows of the final table."""

    def __init__(self, dev: torch.device, p: dict, deadline: float):
        self.dev, self.p, self.deadline = dev, p, deadline
        self.data_note = "random CIFAR-shaped tensors"
        self.train: Dataset | None = None
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.rows: list[tuple[str, ...]] = []

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def synced(self, fn):
        """``fn`` followed by a device synchronisation, so wall clocks see the kernels."""
        def run():
            out = fn()
            self.sync()
            return out
        return run

    def resnet(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_model("resnet20", self.train.info).eval().to(self.dev)

    def row(self, figure: str, ours: str, base: str = "", ratio: str = "", goal: str = "") -> None:
        self.rows.append((figure, ours, base, ratio, goal))


# ----------------------------------------------------------------------------------- parts
def part_data(ctx: Ctx, how: str) -> None:
    """Real CIFAR-10 when found (``how`` auto/real), else random tensors of CIFAR shape."""
    p, gen = ctx.p, torch.Generator().manual_seed(0)
    if how != "synthetic":
        from robustcompress.data import load_dataset

        t0 = time.perf_counter()
        try:
            ds = load_dataset("cifar10")
        except Exception as e:  # noqa: BLE001 - auto falls back, real reports
            if how == "real":
                raise
            print(f"RESULT data: real CIFAR-10 not found ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:160]}); timing on random CIFAR-shaped tensors")
        else:
            s = time.perf_counter() - t0
            ctx.data_note = f"real CIFAR-10 ({ds.extra.get('source', '?')})"
            ctx.train = Dataset(ds.info, ds.train, Split(ds.test.x[:0], ds.test.y[:0]))
            ctx.x, ctx.y = ds.test.x[:p["batch"]].to(ctx.dev), ds.test.y[:p["batch"]].to(ctx.dev)
            print(f"RESULT data: real CIFAR-10 loaded in {s:.1f} s "
                  f"(cache hit: {ds.extra.get('cache_hit')}), {len(ds.train)} train images")
            ctx.row("CIFAR-10 load (decode or cache)", f"{s:.1f} s")
            return
    ctx.train = synthetic("cifar10", (3, 32, 32), max(p["epoch_images"], p["at_images"]))
    info = info_for("resnet20")
    ctx.x = torch.rand((p["batch"],) + info.shape, generator=gen).to(ctx.dev)
    ctx.y = torch.randint(0, 10, (p["batch"],), generator=gen).to(ctx.dev)
    if how == "synthetic":
        print("RESULT data: random CIFAR-shaped tensors (timing does not depend on the values)")


def attack_part(kind: str, steps: int):
    """A part timing ``run_attack(kind)`` against the bare loop of the same steps."""
    def run(ctx: Ctx) -> None:
        model, x, y = ctx.resnet(), ctx.x, ctx.y
        eps = EPS["resnet20"]
        threat = ThreatModel.from_spec("linf", eps, ctx.train.info)
        bare_loop = {"pgd": bare_pgd, "apgd": bare_apgd}[kind]
        bare = ctx.synced(lambda: bare_loop(model, x, y, eps, steps,
                                            torch.Generator(device=ctx.dev).manual_seed(1)))
        ours = ctx.synced(lambda: run_attack(kind, model, x, y, threat, steps=steps,
                                             early_stop=False,
                                             generator=torch.Generator().manual_seed(1)))
        t = compare({"bare": bare, "robustcompress": ours}, ctx.p["reps"])
        r = summarise("resnet20", kind, len(x), t)
        med = {k: statistics.median(v) for k, v in t.items()}
        label = f"{kind.upper()}-{steps}"
        print(f"RESULT {kind}-{steps}: ours {med['robustcompress']:.4f} s, bare "
              f"{med['bare']:.4f} s, ratio {r['ratio_median']:.3f}x (median of {ctx.p['reps']}; "
              f"best {r['ratio_best']:.3f}x), ResNet-20 batch {len(x)}, goal <= 1.05x")
        ctx.row(f"{label}, ResNet-20, batch {len(x)} (ours / bare loop)",
                f"{med['robustcompress']:.4f} s", f"{med['bare']:.4f} s",
                f"{r['ratio_median']:.3f}x (best {r['ratio_best']:.3f}x)", "<= 1.05x")
    return run


def part_noise(ctx: Ctx) -> None:
    """A random start's noise for the batch: SampleNoise (per-sample streams, batch-invariant)
    vs one ``torch.rand`` of the batch; on CUDA also the per-sample generators (the fallback
    without triton), for comparison."""
    x, reps = ctx.x, ctx.p["reps"]
    kernel = seeds_module._noise_kernels(ctx.dev)
    name = "Philox kernel" if kernel is not None else "per-sample generators"
    gen = torch.Generator(device=ctx.dev).manual_seed(1)
    runs = {"plain": lambda: torch.rand(x.shape, generator=gen, device=ctx.dev),
            name: lambda: SampleNoise(len(x), torch.Generator().manual_seed(1), ctx.dev).rand(x)}
    if kernel is not None:
        def generators():
            saved = seeds_module._noise_kernels
            seeds_module._noise_kernels = lambda device: None
            try:
                return SampleNoise(len(x), torch.Generator().manual_seed(1), ctx.dev).rand(x)
            finally:
                seeds_module._noise_kernels = saved
        runs["per-sample generators"] = generators
    best = {label: _time(ctx.synced(fn), reps) for label, fn in runs.items()}
    for label in list(runs)[1:]:
        ratio = best[label] / best["plain"]
        print(f"RESULT noise: {label} {best[label] * 1e3:.2f} ms, one torch.rand "
              f"{best['plain'] * 1e3:.2f} ms, ratio {ratio:.2f}x (best of {reps}), batch {len(x)}")
        ctx.row(f"random-start noise, {label} / one torch.rand, batch {len(x)}",
                f"{best[label] * 1e3:.2f} ms", f"{best['plain'] * 1e3:.2f} ms", f"{ratio:.2f}x", "-")


def _sampler_name(dev: torch.device) -> str:
    """Which exact SAP sampler runs on ``dev`` (robustcompress.nn.sap picks it)."""
    if sap_module._triton_kernels(dev) is not None:
        return "Triton kernels"
    if dev.type == "cpu" and sap_module._compiled_kernel() is not None:
        return "numba kernel"
    return "torch cell table"


def part_sap(ctx: Ctx) -> None:
    """Forward of exact SAP-100 ResNet-20 vs the plain forward (best of interleaved repeats);
    on CUDA also with the torch cell table, the fallback without triton, for comparison."""
    plain = ctx.resnet()
    exact = sap(plain)
    x = ctx.x[:ctx.p["sap_batch"]]
    name = _sampler_name(ctx.dev)
    runs = [("plain", plain, None), (f"sap exact ({name})", exact, None)]
    if name == "Triton kernels":
        runs.append(("sap exact (torch cell table)", exact, lambda device: None))
    best = {label: float("inf") for label, _, _ in runs}
    for _ in range(ctx.p["sap_repeat"]):
        for label, m, kernels in runs:
            def fwd(m=m, kernels=kernels):
                saved = sap_module._triton_kernels
                if kernels is not None:
                    sap_module._triton_kernels = kernels
                try:
                    with torch.no_grad():
                        m(x)
                finally:
                    sap_module._triton_kernels = saved
            best[label] = min(best[label], _time(ctx.synced(fwd), 1))
    for label, _, _ in runs[1:]:
        ratio = best[label] / best["plain"]
        print(f"RESULT sap: {label} forward {best[label] * 1e3:.2f} ms, plain "
              f"{best['plain'] * 1e3:.2f} ms, ratio {ratio:.2f}x (best of {ctx.p['sap_repeat']}), "
              f"ResNet-20 batch {len(x)}, goal <= 3x")
        ctx.row(f"{label} SAP-100 forward / plain, ResNet-20, batch {len(x)}",
                f"{best[label] * 1e3:.2f} ms", f"{best['plain'] * 1e3:.2f} ms",
                f"{ratio:.2f}x", "<= 3x")


def _epoch(ctx: Ctx, images: int, warmup: int, objective=None, **opts) -> tuple[float, int]:
    """(seconds for a 50,000-image epoch, timed images) from ``images_per_second``."""
    batch = ctx.p["train_batch"]
    steps = max(1, min(images, len(ctx.train.train)) // batch)
    ips = images_per_second("resnet20", ctx.train, steps, batch, "sgd", device=ctx.dev,
                            objective=objective, warmup_steps=warmup, hflip="auto", **opts)
    return CIFAR_EPOCH / ips, steps * batch


def part_train(ctx: Ctx) -> None:
    """A ResNet-20 standard epoch: amp and channels_last on CUDA, plain float32 elsewhere; on
    CUDA with the default deterministic cuDNN kernels and again without."""
    cuda, b = ctx.dev.type == "cuda", ctx.p["train_batch"]
    s, n = _epoch(ctx, ctx.p["epoch_images"], ctx.p["warmup_steps"], amp=cuda, channels_last=cuda)
    how = "amp + channels_last" if cuda else "float32"
    print(f"RESULT train: ResNet-20 standard CIFAR-10 epoch {s:.2f} s ({how}, SGD batch {b}, "
          f"flips; {n} images timed after {ctx.p['warmup_steps']} warm-up steps, scaled to "
          f"{CIFAR_EPOCH}), goal < 3 s on an H100/H200")
    ctx.row(f"ResNet-20 standard epoch ({how}, batch {b}; {n} images timed, per 50,000)",
            f"{s:.2f} s", "", "", "< 3 s")
    if cuda:  # the price of the default deterministic cuDNN kernels
        f, _ = _epoch(ctx, ctx.p["epoch_images"], ctx.p["warmup_steps"], amp=True,
                      channels_last=True, deterministic=False)
        print(f"RESULT train: the same epoch with deterministic=False {f:.2f} s "
              f"(deterministic / not: {s / f:.2f}x)")
        ctx.row("ResNet-20 standard epoch, deterministic=False (deterministic / not)",
                f"{f:.2f} s", "", f"{s / f:.2f}x", "-")


def part_train_at(ctx: Ctx) -> None:
    """A PGD-7 adversarial-training epoch (float32: attacks never run under autocast)."""
    from robustcompress.training.objectives import pgd_training

    threat = ThreatModel.from_spec("linf", 8 / 255, ctx.train.info)
    obj = pgd_training(threat, steps=7, step_size=2 / 255)
    b = ctx.p["train_batch"]
    s, n = _epoch(ctx, ctx.p["at_images"], ctx.p["at_warmup_steps"], objective=obj,
                  channels_last=ctx.dev.type == "cuda")
    print(f"RESULT train-at: ResNet-20 PGD-7 AT epoch {s:.2f} s (float32, SGD batch {b}; {n} "
          f"images timed, scaled to {CIFAR_EPOCH})")
    ctx.row(f"ResNet-20 PGD-7 AT epoch (float32, batch {b}; {n} images timed, per 50,000)",
            f"{s:.2f} s")


def part_eot(ctx: Ctx, max_rows) -> None:
    """One EOT-n input gradient of SAP-100 ResNet-20 (after a tiny warm-up)."""
    n, b = ctx.p["eot"], ctx.p["eot_batch"]
    bench_eot(min(4, b), 2, max_rows, str(ctx.dev))
    s = bench_eot(b, n, max_rows, str(ctx.dev))
    print(f"RESULT eot: EOT-{n} input gradient of SAP-100 ResNet-20 on {b} inputs {s:.2f} s "
          f"({s / n:.3f} s per draw; max_rows {max_rows})")
    ctx.row(f"EOT-{n} gradient, SAP-100 ResNet-20, {b} inputs", f"{s:.2f} s",
            "", "", "(paper: ~20 s per draw on 8 GPUs)")


def part_tests(ctx: Ctx, pytest_args: str | None, out: Path | None) -> None:
    """The pytest suite in a subprocess, stopped a few seconds before the budget ends."""
    if pytest_args is None:
        pytest_args = "-q -rfE --maxfail=20"
        if importlib.util.find_spec("xdist") is not None:
            pytest_args += f" -n {max(1, min(8, (os.cpu_count() or 2) // 2))} --dist loadfile"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *shlex.split(pytest_args)]
    log = (out or Path(os.environ.get("TMPDIR", "/tmp"))) / "pytest.log"
    left = ctx.deadline - time.monotonic() - 10
    print(f"running {' '.join(cmd)} (at most {left:.0f} s; log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=max(left, 1)).returncode
        except subprocess.TimeoutExpired:
            rc = None
    text = log.read_text(errors="replace").splitlines()
    for line in [ln for ln in text if ln.startswith(("FAILED", "ERROR"))][:25]:
        print("  " + line[:300])
    summary = next((ln.strip("= ") for ln in reversed(text)
                    if re.search(r"\d+ (passed|failed|errors?|skipped)", ln)), "no summary line")
    took = time.perf_counter() - t0
    if rc is None:
        summary = f"cut off after {took:.0f} s (budget); last: {summary}"
    print(f"RESULT tests: {summary} (exit {rc}, {took:.0f} s)")
    ctx.row("test suite (`pytest " + pytest_args + "`)", summary, "", "", "all green")


# ----------------------------------------------------------------------------------- driver
def _alarm(signum, frame):
    raise OutOfBudget


def run_part(ctx: Ctx, name: str, fn) -> None:
    """Run one part under the budget; print its failure and go on."""
    left = ctx.deadline - time.monotonic()
    if left < ctx.p["min_part_s"]:
        print(f"SKIPPED {name}: {max(left, 0):.0f} s of the budget left", flush=True)
        ctx.row(name, "not measured (budget spent)")
        return
    armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if armed:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, left)
    t0 = time.perf_counter()
    try:
        fn(ctx)
    except OutOfBudget:
        print(f"FAILED {name}: cut off after {time.perf_counter() - t0:.0f} s, budget spent")
        ctx.row(name, "not measured (cut off at the budget)")
    except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others
        print(f"FAILED {name}: {type(e).__name__}: {str(e)[:500]}")
        traceback.print_exc(limit=-4, file=sys.stdout)
        ctx.row(name, f"failed: {type(e).__name__}")
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        if ctx.dev.type == "cuda":
            torch.cuda.empty_cache()
    print(f"  ({name}: {time.perf_counter() - t0:.1f} s)", flush=True)


def environment(dev: torch.device) -> str:
    """Device name, torch / CUDA versions, threads, date and load, in one line."""
    if dev.type == "cuda":
        try:
            name = torch.cuda.get_device_name(dev)
        except Exception as e:  # noqa: BLE001 - every part then says what failed
            name = f"no usable CUDA device ({type(e).__name__}: {e})"
        name += f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"python {platform.python_version()}, {date}, load average {load:.2f}")


def markdown(ctx: Ctx, env: str, argv: list[str], mode: str) -> str:
    """The block to paste into bench/RESULTS.md."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"## GPU path (bench/gpu.py, {date})\n\n"
            f"Command: `python3 bench/gpu.py {shlex.join(argv)}` ({mode} sizes). {env}. Data: "
            f"{ctx.data_note}. Untrained zoo ResNet-20 (timing does not depend on the weights), "
            "attacks with early stopping off, tools interleaved after one warm-up; every ratio is "
            "ours / the bare loop or plain model on the same device, in the same run.\n\n"
            "| figure | ours | bare / plain | ratio | goal |\n|---|---:|---:|---:|---|\n")
    return head + "".join(f"| {' | '.join(r)} |\n" for r in ctx.rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (CPU: about a minute)")
    mode.add_argument("--smoke", action="store_true", help="smallest sizes (the test's)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="total time; a running part is cut off and no new one starts after it")
    ap.add_argument("--data", choices=("auto", "real", "synthetic"), default=None,
                    help="default: auto (real CIFAR-10 if found) in full mode, else synthetic")
    for name in ("batch", "reps", "apgd-steps", "eot", "eot-batch", "epoch-images", "at-images"):
        ap.add_argument(f"--{name}", type=int, default=None, help="override the mode's size")
    ap.add_argument("--max-rows", type=int, default=None, help="EOT rows per forward (default: "
                    "the library's choice)")
    ap.add_argument("--skip", default="", help="comma-separated parts not to run ('data': "
                    "random tensors instead of loading CIFAR-10)")
    ap.add_argument("--tests", action="store_true", help="run the pytest suite at the end")
    ap.add_argument("--pytest-args", default=None, help="default: -q -rfE --maxfail=20 -n N "
                    "--dist loadfile (N = half the cores, at most 8; no -n without xdist)")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write results.md and pytest.log here")
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t_start = time.monotonic()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    p = dict(PRESETS[mode])
    for key in ("batch", "reps", "apgd_steps", "eot", "eot_batch", "epoch_images", "at_images"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ctx = Ctx(dev=dev, p=p, deadline=t_start + args.budget_s)
    env = environment(dev)
    print(env, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    how = "synthetic" if "data" in skip else args.data or ("auto" if mode == "full" else "synthetic")
    run_part(ctx, "data", lambda c: part_data(c, how))
    if ctx.x is None and how != "synthetic":  # a failed real load still leaves tensors to time
        run_part(ctx, "data-fallback", lambda c: part_data(c, "synthetic"))
    parts = [("noise", part_noise)] + [(f"pgd-{s}", attack_part("pgd", s)) for s in p["pgd_steps"]]
    parts += [(f"apgd-{p['apgd_steps']}", attack_part("apgd", p["apgd_steps"])),
              ("sap", part_sap), ("train", part_train),
              ("eot", lambda c: part_eot(c, args.max_rows)), ("train-at", part_train_at)]
    if args.tests:
        parts.append(("tests", lambda c: part_tests(c, args.pytest_args, args.out)))
    for name, fn in parts:
        if name not in skip:
            run_part(ctx, name, fn)
    block = markdown(ctx, env, sys.argv[1:] if argv is None else argv, mode)
    print(f"\ntotal {time.monotonic() - t_start:.0f} s\n\n----- bench/RESULTS.md block -----\n"
          f"{block}----- end of block -----")
    if args.out:
        (args.out / "results.md").write_text(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
