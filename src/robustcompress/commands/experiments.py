"""CLI commands of the experiments layer: run, demo, reproduce, config, results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
import yaml

# paper name -> (title, prefix of its configs in configs/: <prefix>*-<scale>.yaml)
PAPERS = {
    "tensorization": ("Defensive tensorization (Bulat et al.)", "tensorization"),
    "sap": ("Stochastic activation pruning (Dhillon et al., ICLR 2018)", "sap"),
    "sparse-dnns": ("Sparse DNNs with improved adversarial robustness (Guo et al., NeurIPS 2018)", "pruning"),
    "weight-quantization": ("Robustness of weight-quantized networks (Song et al., AAAI-21 RSEML)", "quantization"),
    "anp-vs": ("Adversarial neural pruning with vulnerability suppression (Madaan et al., ICML 2020)", "anp"),
}


def paper_configs(paper: str, scale: str) -> list:
    """The shipped configs of ``paper`` at ``scale`` (e.g. tensorization-mnist-lenet5-cpu,
    tensorization-fsdd-soundnet5-cpu)."""
    from robustcompress.experiments.api import list_configs

    prefix = PAPERS[paper][1]
    return [p for name, p in list_configs().items() if name.startswith(prefix) and name.endswith(f"-{scale}")]


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("reproduce")(reproduce)
    config_app = typer.Typer(help="Check, show and list experiment configs.", no_args_is_help=True)
    config_app.command("check")(config_check)
    config_app.command("show")(config_show)
    config_app.command("list")(config_list)
    app.add_typer(config_app, name="config")
    app.command("results")(results)
    defenses_app = typer.Typer(help="The registered defenses, and what each would touch in a model.",
                               invoke_without_command=True)
    defenses_app.callback()(defenses)
    defenses_app.command("inspect")(defenses_inspect)
    app.add_typer(defenses_app, name="defenses")


def defenses(ctx: typer.Context) -> None:
    """List the registered defenses (the `method:` of a config), their paper and parameters.

    `robustcompress defenses inspect --checkpoint DIR` shows the sites each one would touch.
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from robustcompress.defenses import list_defenses

    table = Table(title="defenses (config `method:` names)")
    for c in ("method", "paper", "parameters (default)"):
        table.add_column(c)
    for name, spec in list_defenses().items():
        params = ", ".join(f"{k}={f.default!r}" for k, f in spec.Params.model_fields.items())
        table.add_row(name, spec.paper, Text(params))  # literal: defaults may hold [...]
    Console().print(table)


def defenses_inspect(
    checkpoint: str = typer.Option(..., help="A checkpoint (from `train`, `run` or `import-model` "
                                   "for your own model)."),
    method: Optional[str] = typer.Option(None, help="Only this defense (default: all)."),
    sites: bool = typer.Option(False, "--sites", help="List every site by name, not only counts."),
) -> None:
    """Show which sites each defense would touch in a model, and what it leaves and why.

    Activation sites are every application (a ReLU module used twice is two sites; F.relu and
    x.relu() count); layer sites are conv (incl. grouped/depthwise) and linear modules. A defense
    that cannot cover the model says so here instead of skipping parts of it.

    Example: robustcompress defenses inspect --checkpoint runs/mine --method sap --sites
    """
    from robustcompress.defenses.base import coverage_report, describe_coverage
    from robustcompress.errors import UserInputError
    from robustcompress.training import load_checkpoint

    report = coverage_report(load_checkpoint(checkpoint))
    if method is not None:
        report = [c for c in report if c.method == method]
        if not report:
            raise UserInputError(f"unknown defense {method!r}; see `robustcompress defenses`")
    typer.echo("\n".join(describe_coverage(report, sites)))


def run(
    config: str = typer.Argument(..., help="YAML file, or the name of a shipped config (see `config list`)."),
    output_dir: Optional[str] = typer.Option(None, "--out", help="Run folder (default: runs/<name>)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N] (overrides the config)."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (overrides the config and $ROBUSTCOMPRESS_DATA)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    seed: Optional[int] = typer.Option(None, help="Seed of the run (overrides the config's `seed:`); "
                                       "the run folder then defaults to runs/<name>-seed<N>."),
    plan: bool = typer.Option(False, "--plan", help="List the units the run would run and estimate "
                              "each stage's time on this device (a few timed steps), then exit."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Start without asking, however long the "
                             "estimate (a run estimated over 2 h on a CPU asks first)."),
) -> None:
    """Run a whole experiment: train, defend, attack, compare; resumable.

    Re-running the same command skips every finished unit (trained models, defense variants,
    evaluations), so an interrupted run loses at most the unit in progress. `--plan` shows what
    is left and how long it should take, without running anything.

    Example: robustcompress run configs/demo.yaml
    Example: robustcompress run sap-cifar10-resnet20-full --plan
    Example: robustcompress run configs/demo.yaml --seed 1   (a second seed, in runs/demo-seed1)
    """
    from robustcompress.experiments import find_config, load_config, plan_experiment, run_experiment

    cfg = _with_seed(_overrides(load_config(find_config(config)), device, data_dir), seed)
    if plan:
        _print_plan(plan_experiment(cfg, output_dir=output_dir))
        return
    if not yes and _may_ask(cfg):
        _confirm_long_run(plan_experiment(cfg, output_dir=output_dir))
    run_experiment(cfg, progress=progress, output_dir=output_dir)


def _with_seed(cfg, seed: Optional[int]):
    """``cfg`` with ``seed`` (if given) and its run folder suffixed ``-seed<N>``, so a second seed
    never resumes from (or overwrites) the first seed's folder; ``--out`` still wins."""
    if seed is None:
        return cfg
    folder = cfg.output_dir or str(Path("runs") / cfg.name)
    return cfg.model_copy(update={"seed": seed, "output_dir": f"{folder}-seed{seed}"})


def _may_ask(cfg) -> bool:
    """Only a single-process run on a CPU is estimated before it starts (a GPU run is not held
    up, and the ranks of a torchrun job must not each calibrate and ask)."""
    import os

    from robustcompress.device import resolve_device

    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 and resolve_device(cfg.device).type == "cpu"


def _confirm_long_run(plan) -> None:
    """Ask before a run estimated over the threshold on a CPU; refuse without a terminal."""
    import sys

    from robustcompress.errors import UserInputError

    if not plan.needs_confirmation():
        return
    message = f"{plan.config}: {plan.summary()}"
    if not sys.stdin.isatty():
        raise UserInputError(f"{message}; not starting a run this long without a confirmation: pass "
                             "--yes to start it (see the stages with --plan, or use --device cuda)")
    typer.echo(message + " (see the stages with --plan)")
    typer.confirm("Start it?", abort=True)


def _print_plan(plan) -> None:
    """The plan as a table (stage, units, done, work, estimated time), its legend and total."""
    from rich.console import Console

    from robustcompress.experiments.plan import format_duration

    header = ["stage", "units", "done", "work", "time"]
    body = [[s.name, str(s.units), str(s.done), _fmt_count(s.work),
             "–" if s.seconds is None else format_duration(s.seconds)] for s in plan.stages]
    console = Console()
    _print_table(console, header, body, f"{plan.config}: the units of the run and their cost")
    console.print("work: training steps (epochs x batches x the defense's cost per step) or attack "
                  "passes (iterations x EOT draws x points / batch); time: the estimate, from a few "
                  "timed steps of the base model on this device; done units cost nothing",
                  markup=False, highlight=False)
    for note in plan.notes:  # what the estimate assumes (e.g. how many points survive)
        console.print(note, markup=False, highlight=False)
    console.print(f"total: {plan.summary()}", markup=False, highlight=False)
    console.print(f"run folder: {plan.output_dir}", markup=False, highlight=False, soft_wrap=True)


def _fmt_count(n: float) -> str:
    """``"980"``, ``"10.2k"``, ``"3.4M"``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _overrides(cfg, device, data_dir):
    upd = {}
    if device:
        upd["device"] = device
    if data_dir:
        upd["dataset"] = cfg.dataset.model_copy(update={"data_dir": data_dir})
    return cfg.model_copy(update=upd) if upd else cfg


def demo(
    output_dir: str = typer.Option("runs/demo", "--out", help="Run folder."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The main job on the embedded digits data, in a few minutes on a laptop CPU.

    Trains a small LeNet-5 on scikit-learn's 8x8 digits, applies every defense family
    (adversarial training, tensorization, SAP, pruning, quantization, ANP-VS, ...), attacks every
    variant with the papers' protocols and the adaptive evaluation, prints the leaderboard and
    writes runs/demo/report.md and report.html.
    """
    from robustcompress.experiments import demo_config_path, load_config, run_experiment

    cfg = _overrides(load_config(demo_config_path()), device, None)
    run_experiment(cfg, progress=progress, output_dir=output_dir)


def reproduce(
    paper: str = typer.Argument(..., help=f"One of: {', '.join(PAPERS)}."),
    only: Optional[str] = typer.Option(None, help="Run only the config whose name contains this (e.g. audio)."),
    scale: str = typer.Option("cpu", help="cpu (minutes on a laptop) or full (the paper's recipe, for a GPU)."),
    output_dir: Optional[str] = typer.Option(None, "--out", help="Run folder."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]."),
    data_dir: Optional[str] = typer.Option(None, help="Data root."),
) -> None:
    """Run a paper's configuration and print our numbers beside the paper's table values.

    Example: robustcompress reproduce sap --scale cpu
    """
    from robustcompress.errors import UserInputError
    from robustcompress.experiments import load_config, run_experiment

    if paper not in PAPERS:
        raise UserInputError(f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)}")
    if scale not in ("cpu", "full"):
        raise UserInputError("--scale must be cpu or full")
    paths = [p for p in paper_configs(paper, scale) if only is None or only in p.stem]
    if not paths:
        raise UserInputError(f"no {scale}-scale config for {paper!r}" + (f" matching {only!r}" if only else ""))
    for path in paths:
        typer.secho(f"== {PAPERS[paper][0]}: {path.stem}", bold=True)
        cfg = _overrides(load_config(path), device, data_dir)
        out = None if output_dir is None else str(Path(output_dir) / path.stem)
        run_experiment(cfg, output_dir=out)


def config_check(path: str = typer.Argument(..., help="YAML config file.")) -> None:
    """Validate a config: unknown keys, wrong types, unknown defenses/attacks, eps units."""
    from robustcompress.experiments import expanded_dict, find_config, load_config

    cfg = load_config(find_config(path))
    d = expanded_dict(cfg)
    typer.echo(f"{path}: OK ({len(d['variants'])} defense variant(s), "
               f"{sum(len(t.eps) for t in cfg.evaluation.threats)} eps value(s), "
               f"{len(cfg.evaluation.paper)} paper-protocol attack(s), adaptive={cfg.evaluation.adaptive})")


def config_show(path: str = typer.Argument(..., help="YAML config file or shipped config name.")) -> None:
    """Print the fully expanded config (all defaults, grids expanded into variants)."""
    from robustcompress.experiments import expanded_dict, find_config, load_config

    typer.echo(yaml.safe_dump(expanded_dict(load_config(find_config(path))), sort_keys=False))


def config_list() -> None:
    """List the ready configs shipped in configs/, each with what it runs."""
    from robustcompress.experiments.config_catalog import describe_configs

    described = describe_configs()
    width = max(map(len, described), default=0)
    for name, text in described.items():
        typer.echo(f"{name:{width}s}  {text}")


def results(
    run_dir: str = typer.Argument(..., help="Run folder (holds results.db)."),
    variant: Optional[str] = typer.Option(None, help="Filter by variant (* wildcard)."),
    attack: Optional[str] = typer.Option(None, help="Filter by attack."),
    protocol: Optional[str] = typer.Option(None, help="paper | adaptive | minimal | clean."),
    export: Optional[str] = typer.Option(None, help="Write the rows to a .csv or .json file."),
    metrics: bool = typer.Option(False, "--metrics", help="Show per-variant metrics instead of results."),
    all_units: bool = typer.Option(False, "--all", help="Every row in the store, also those of other "
                                   "configs run into the same folder (default: the last run's)."),
    security: bool = typer.Option(False, "--security", help="Security curves as a table: robust "
                                  "accuracy % against eps from the minimal distances (config "
                                  "evaluation.security)."),
) -> None:
    """Query the results store of a run; export to CSV/JSON.

    Example: robustcompress results runs/demo --protocol adaptive --export adaptive.csv
    Example: robustcompress results runs/demo --security
    """
    from rich.console import Console

    from robustcompress.errors import UserInputError
    from robustcompress.experiments import ResultsStore, export_rows

    db = Path(run_dir) / "results.db"
    if not db.exists():
        raise UserInputError(f"{db} does not exist; give the folder of a run (e.g. runs/demo)")
    listed = Path(run_dir) / "units.json"
    units = None if all_units or not listed.exists() else json.loads(listed.read_text())
    with ResultsStore(db) as store:
        rows = store.metrics(variant=variant, units=units) if metrics else store.results(
            variant=variant, attack=attack, protocol=protocol, units=units)
    if export:
        export_rows(rows, export)
        typer.echo(f"wrote {len(rows)} rows to {export}")
        return
    if security:
        from robustcompress.experiments.security import security_table

        header, body = security_table(rows)
        if not body:
            raise UserInputError(f"{db} has no security curves; set evaluation.security: fmn (or fab, "
                                 "deepfool) in the config and run it again")
        rows = [dict(zip(header, r)) for r in body]
        _print_table(Console(), header, body, f"{db}: robust accuracy % against eps (security curves)")
        return
    _print_rows(Console(), rows, metrics, str(db))


# the columns `results` shows (the export has them all); mean_norm only for minimal rows
_RESULT_COLS = ["variant", "protocol", "attack", "norm", "eps_label", "run", "n", "clean_acc",
                "robust_acc", "fooled_any", "mean_norm"]
_HEADERS = {"eps_label": "eps", "clean_acc": "clean", "robust_acc": "robust", "fooled_any": "fooled"}


def _print_table(console, header: list[str], body: list[list[str]], title: str) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, box=None, padding=(0, 1))
    for h in header:
        table.add_column(h, no_wrap=True, min_width=len(h))
    for r in body:
        table.add_row(*[Text(c) for c in r])
    console.print(table)


def _print_rows(console, rows: list[dict], metrics: bool, title: str) -> None:
    """The rows as a table readable at the console's width (80 columns too): names printed
    literally (``tensor[theta=0.9]`` is not console markup), numbers and variant names whole; a
    column with one value in every row goes to the title, and when the table is still too wide
    the least needed columns are left out (named in the caption; ``--export`` has them all)."""
    cols = ["variant", "key", "value"] if metrics else [
        c for c in _RESULT_COLS if any(r.get(c) is not None for r in rows)]
    same = {c: _fmt(rows[0].get(c)) for c in cols if len(rows) > 1 and c not in
            ("variant", "robust_acc", "key", "value") and len({_fmt(r.get(c)) for r in rows}) == 1}
    cols = [c for c in cols if c not in same]
    note = ", ".join(f"{_HEADERS.get(c, c)} {v}" for c, v in same.items())
    title = f"{title} ({len(rows)} rows" + (f"; all {note})" if note else ")")
    dropped: list[str] = []
    table = _rows_table(rows, cols, title, dropped)
    wide = console.options.update_width(10_000)  # the natural width, not clamped to the console's
    for c in ("mean_norm", "fooled_any", "run", "norm", "protocol"):
        if console.measure(table, options=wide).maximum <= console.width:
            break
        if c in cols:
            cols.remove(c)
            dropped.append(c)
            table = _rows_table(rows, cols, title, dropped)
    console.print(table)


def _rows_table(rows: list[dict], cols: list[str], title: str, dropped: list[str]):
    """A rich table of ``rows`` (cells as literal Text; long text cells fold)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    caption = f"not shown: {', '.join(dropped)} (--export writes every column)" if dropped else None
    table = Table(title=Text(title), caption=Text(caption) if caption else None,
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for j, c in enumerate(cols):
        numeric = c not in ("variant", "protocol", "attack", "norm", "key", "value")
        widest = max([len(row[j]) for row in cells] + [1])
        # numbers and variant names stay whole (names up to 24 characters), other text up to 10
        keep = widest if numeric else min(widest, 24 if c == "variant" else 10)
        table.add_column(_HEADERS.get(c, c), overflow="fold", justify="right" if numeric else "left",
                         min_width=keep)
    for row in cells:
        table.add_row(*[Text(v) for v in row])
    return table


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return json.dumps(v)[:40]
    return str(v)
