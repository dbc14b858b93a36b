"""CLI command ``scale-info``: how to run robustcompress on several processes / GPUs.

Prints the exact ``torchrun`` commands for sharded evaluation (``run``) and data-parallel
training (``train``), the distributed context of the current process (world size, rank,
backend) and checks the environment: gloo/nccl availability, visible CUDA devices, and with
``--check`` a real rendezvous of ``--nproc`` gloo processes (an all-reduce).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Optional

import typer

from robustcompress.errors import UserInputError


def torchrun_commands(nproc: int, config: str, dataset: str, model: str,
                      device: str = "auto") -> dict[str, str]:
    """The launch lines for sharded evaluation and data-parallel training (pure)."""
    dev = "" if device == "auto" else f" --device {device}"
    return {
        "sharded evaluation": f"torchrun --nproc_per_node {nproc} -m robustcompress.cli run "
                              f"{config}{dev}",
        "data-parallel training": f"torchrun --nproc_per_node {nproc} -m robustcompress.cli train "
                                  f"--dataset {dataset} --model {model}{dev} --out "
                                  f"runs/{dataset}-{model}-ddp",
    }


def environment() -> dict[str, object]:
    """Distributed context and capabilities of this process (no side effects)."""
    import torch
    import torch.distributed as dist

    avail = dist.is_available()
    init = avail and dist.is_initialized()
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "distributed available": avail,
        "gloo available": avail and dist.is_gloo_available(),
        "nccl available": avail and dist.is_nccl_available(),
        "cuda devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
        "cpu cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "WORLD_SIZE": os.environ.get("WORLD_SIZE", "unset (not launched by torchrun)"),
        "RANK / LOCAL_RANK": f"{os.environ.get('RANK', '-')} / {os.environ.get('LOCAL_RANK', '-')}",
        "process group": (f"initialised, backend {dist.get_backend()}, world size "
                          f"{dist.get_world_size()}") if init else "not initialised",
        "backend torchrun would use": "nccl (one GPU per process)" if cuda else "gloo (CPU)",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_worker(rank: int, world: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        expected = world * (world + 1) / 2
        if float(t) != expected:
            raise RuntimeError(f"all_reduce gave {float(t)}, expected {expected}")
    finally:
        dist.destroy_process_group()


def check_gloo(nproc: int) -> float:
    """Spawn ``nproc`` local gloo processes that all-reduce one number; returns seconds.

    Raises RuntimeError (with the worker's error) when the rendezvous or the reduction fails.
    """
    import torch.multiprocessing as mp

    t0 = time.perf_counter()
    mp.spawn(_check_worker, args=(nproc, _free_port()), nprocs=nproc, join=True)
    return time.perf_counter() - t0


def scale_info_cmd(
    nproc: int = typer.Option(2, min=1, help="Processes per machine for the printed commands and --check."),
    config: str = typer.Option("CONFIG.yaml", help="Experiment config to put in the `run` command."),
    dataset: str = typer.Option("cifar10", help="Dataset to put in the `train` command."),
    model: str = typer.Option("resnet20", help="Model to put in the `train` command."),
    device: str = typer.Option("auto", help="auto | cpu | cuda: the device the commands will use."),
    check: bool = typer.Option(False, help="Also spawn --nproc gloo processes and all-reduce (a real rendezvous)."),
    data_dir: Optional[str] = typer.Option(None, help="Unused; accepted like every command."),
    seed: int = typer.Option(0, help="Unused; accepted like every command."),
) -> None:
    """Print the torchrun commands for sharded evaluation and data-parallel training, the current
    distributed context, and check that this machine can run them.

    Example: robustcompress scale-info --nproc 2 --config demo.yaml --check
    """
    from rich.console import Console
    from rich.table import Table

    from robustcompress.device import resolve_device

    dev = resolve_device(device)  # --device cuda without a GPU: a clear error
    env = environment()
    con = Console()
    t = Table(title="robustcompress scale-info", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in env.items():
        t.add_row(k, (", ".join(v) or "none") if isinstance(v, list) else str(v))
    con.print(t)
    if not env["gloo available"]:
        raise UserInputError("this torch build has no gloo backend, so CPU processes cannot talk "
                             "to each other; install the standard torch wheel from pytorch.org")
    if dev.type == "cuda" and nproc > len(env["cuda devices"]):
        raise UserInputError(f"--nproc {nproc} with --device cuda needs {nproc} GPUs, "
                             f"{len(env['cuda devices'])} visible; lower --nproc")
    con.print("\n[bold]Launch lines[/bold] (`python -m torch.distributed.run` works where "
              "`torchrun` is not on PATH):")
    for what, line in torchrun_commands(nproc, config, dataset, model, device).items():
        con.print(f"  {what}:\n    {line}", soft_wrap=True, highlight=False)
    con.print(
        "\nEvaluation results are identical for any process count (per-batch generators); "
        "`train` splits every batch (--batch-size is the global batch) over the processes and "
        "averages gradients; experiment runs keep training replicated unless the config's "
        "training section sets data_parallel: true. Rank 0 alone writes files and prints.")
    if check:
        secs = check_gloo(nproc)
        con.print(f"\ngloo check: {nproc} processes met and all-reduced correctly "
                  f"({secs:.1f} s including start-up)")


def register(app: typer.Typer) -> None:
    app.command("scale-info")(scale_info_cmd)
