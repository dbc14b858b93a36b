"""Top-level entry points of the experiments layer (used by the CLI and by users)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

from robustcompress.errors import ConfigError
from robustcompress.experiments.config import ExperimentConfig, load_config

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def list_configs() -> dict[str, Path]:
    """Ready configurations shipped with the package (``configs/`` in the repository)."""
    return {p.stem: p for p in sorted(PACKAGE_CONFIGS.glob("*.yaml"))}


def find_config(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a shipped config (``demo``, ``sap-mnist-lenet5-cpu``, ...)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = list_configs()
    stem = p.stem if p.suffix == ".yaml" else str(name_or_path)
    if stem in shipped:
        return shipped[stem]
    raise ConfigError(f"config {name_or_path!r} not found; give a path or one of: {', '.join(shipped)}")


def demo_config_path() -> Path:
    return find_config("demo")


def run_experiment(config: ExperimentConfig | str | Path, *, progress: bool = True, console=None,
                   report: bool = True, output_dir: Optional[str] = None):
    """Run a config end to end (resumable) and write the report; returns a ``RunSummary``.

    Under ``torchrun`` the evaluation is sharded over the processes (see
    :mod:`robustcompress.experiments.distributed`); only rank 0 writes the store and the report.
    """
    from rich.console import Console

    from robustcompress.experiments import distributed
    from robustcompress.experiments.report import gather, print_leaderboard, write_report
    from robustcompress.experiments.runner import Runner
    from robustcompress.experiments.store import ResultsStore

    cfg = config if isinstance(config, ExperimentConfig) else load_config(find_config(config))
    if output_dir is not None:
        cfg = cfg.model_copy(update={"output_dir": output_dir})
    # a redirected run (CI logs, `| tee`) gets a table wide enough to read, not 80 columns
    console = console or (Console() if sys.stdout.isatty() else Console(width=180))
    from robustcompress.device import resolve_device

    t_start = time.perf_counter()
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    started_group = not distributed.is_distributed() and distributed.init_from_env(resolve_device(cfg.device))
    try:
        runner = Runner(cfg, progress=progress, console=console, log=console.print)
        summary = runner.run()
        distributed.barrier()
    finally:
        if started_group:  # we created the process group, so we tear it down
            import torch.distributed as dist

            dist.destroy_process_group()
    if report and runner.rank == 0:
        with ResultsStore(summary.output_dir / "results.db") as store:
            data = gather(store, cfg, summary.variants, summary.unit_keys)
        if getattr(runner, "dataset", None) is not None and runner.dataset.info.note:
            data.notes.append(runner.dataset.info.note)
        paths = write_report(data, summary.output_dir, html_report=cfg.report.html)
        timing = {"wall_s": round(time.perf_counter() - t_start, 1),
                  "stages_s": {k: round(v, 1) for k, v in summary.stage_seconds.items()},
                  "units_run": summary.units_run, "units_skipped": summary.units_skipped}
        (summary.output_dir / "timing.json").write_text(json.dumps(timing, indent=2))
        print_leaderboard(data, console)
        console.print("time per stage (s): " + ", ".join(f"{k} {v}" for k, v in timing["stages_s"].items())
                      + f"; total {timing['wall_s']} s ({summary.units_run} units run, "
                      f"{summary.units_skipped} already done)", markup=False)
        console.print(f"report: {paths['md']}" + (f" and {paths['html']}" if "html" in paths else ""))
        if cfg.mlflow.enabled:
            from robustcompress.experiments.mlflow_log import log_run

            log_run(cfg, data, summary, paths)
    return summary
