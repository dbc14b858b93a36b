"""Scaling of sharded evaluation: the same PGD evaluation with 1 and with 2 gloo processes.

The evaluation is the runner's scheme (:mod:`robustcompress.experiments.distributed`): the
samples are cut into batches, batch ``b`` attacks with its own generator seeded from
``(seed, b)``, rank ``r`` takes batches ``r, r + W, ...`` and the outcomes are gathered in batch
order. Each configuration is launched with ``python -m torch.distributed.run --nproc_per_node W``
and one thread per process (OMP_NUM_THREADS=1), so 2 processes use 2 cores against 1 core.

Printed: wall time of the evaluation itself (between barriers, inside the workers), wall time of
the whole launch (process start, imports, gloo rendezvous), the speed-up 1 -> 2 processes, and
whether the per-sample outcomes (success, prediction, adversarial inputs) are bit-identical.

Usage: python bench/sharded_eval.py [--quick] [--samples 1024] [--batch 32] [--steps 10] [--procs 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def evaluate(n: int, batch: int, steps: int, seed: int = 0) -> tuple[dict, float]:
    """PGD-``steps`` (Linf 0.3, no early stop) on ``n`` MNIST-shaped inputs, fixed random LeNet-5,
    sharded over the process group; returns (gathered outcomes, evaluation seconds)."""
    from robustcompress.attacks import ThreatModel, run_attack
    from robustcompress.data.info import DatasetInfo
    from robustcompress.experiments import distributed as du
    from robustcompress.models import build_model

    info = DatasetInfo("mnist", (1, 28, 28), 10, tuple(str(i) for i in range(10)))
    torch.manual_seed(seed)
    model = build_model("lenet5", info).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    threat = ThreatModel.from_spec(norm="linf", eps=0.3, info=info)
    nb = (n + batch - 1) // batch
    du.barrier()
    t0 = time.perf_counter()
    out = []
    for b in du.my_indices(nb):
        sl = slice(b * batch, min(n, (b + 1) * batch))
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        r = run_attack("pgd", model, x[sl], y[sl], threat, steps=steps, generator=gen,
                       early_stop=False)  # fixed work per sample
        out.append((b, {"success": r.success, "pred": r.pred, "x_adv": r.x_adv}))
    parts = du.gather_ordered(out)
    du.barrier()
    secs = time.perf_counter() - t0
    res = {k: torch.cat([p[k] for p in parts]) for k in ("success", "pred", "x_adv")}
    return res, secs


def worker(args) -> None:
    from safetensors.torch import save_file

    from robustcompress.experiments import distributed as du

    torch.set_num_threads(1)
    du.init_from_env(torch.device("cpu"))
    try:
        res, secs = evaluate(args.n, args.batch, args.steps)
        rank, world = du.rank_and_world()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in res.items()}, args.out + ".safetensors")
            Path(args.out + ".json").write_text(json.dumps({"seconds": secs, "world": world}))
    finally:
        if du.is_distributed():
            torch.distributed.destroy_process_group()


def launch(procs: int, args, out: str, port: int) -> tuple[float, float]:
    """Run the workers under torchrun; returns (evaluation seconds, launch wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
           "--master_port", str(port), __file__, "--worker", "--out", out,
           "--samples", str(args.n), "--batch", str(args.batch), "--steps", str(args.steps)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{procs}-process run failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(Path(out + ".json").read_text())["seconds"], wall


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(quick: bool = False, n: int | None = None, batch: int = 32, steps: int | None = None,
        procs: tuple[int, ...] = (1, 2)) -> dict:
    """Measure every process count in ``procs``; returns the figures and the equality check."""
    from safetensors.torch import load_file

    a = argparse.Namespace(n=n or (256 if quick else 1024), batch=batch,
                           steps=steps or 10)
    rows, outs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in procs:
            out = str(Path(tmp) / f"w{w}")
            try:
                secs, wall = launch(w, a, out, _free_port())
            except RuntimeError as e:  # seen once on the busy shared box: retry on a new port
                print(f"{w}-process launch failed, retrying once: {str(e)[-400:]}", file=sys.stderr)
                secs, wall = launch(w, a, out, _free_port())
            outs[w] = load_file(out + ".safetensors")
            rows.append({"procs": w, "eval_s": secs, "launch_s": wall})
    ref = outs[procs[0]]
    same = all(torch.equal(ref[k], o[k]) for o in outs.values() for k in ref)
    base = rows[0]["eval_s"]
    for r in rows:
        r["speedup"] = base / r["eval_s"]
    return {"n": a.n, "batch": a.batch, "steps": a.steps, "rows": rows, "identical": same}


def format_result(res: dict) -> str:
    lines = [f"PGD-{res['steps']} Linf on {res['n']} MNIST-shaped inputs, LeNet-5, batch "
             f"{res['batch']}, 1 thread per process, gloo",
             "| processes | evaluation s | speed-up | launch wall s |", "|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['procs']} | {r['eval_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['launch_s']:.1f} |")
    lines.append(f"per-sample outcomes identical across process counts: {res['identical']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 inputs instead of 1024")
    ap.add_argument("--samples", dest="n", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    res = run(args.quick, args.n, args.batch, args.steps, tuple(args.procs))
    print(format_result(res))
    if not res["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
