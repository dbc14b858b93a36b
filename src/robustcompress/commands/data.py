"""CLI commands: ``data list | verify | info | download``.

Thin: finds, verifies, loads or downloads through :mod:`robustcompress.data` and prints rich tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DATA_DIR_HELP = ("Data root (default: $ROBUSTCOMPRESS_DATA, then ./data, then ../shared/data). "
                 "For imagefolder: the image folder itself; for tensors: the .npz/.safetensors file.")

data_app = typer.Typer(
    name="data",
    help=("List, verify, inspect and download datasets.\n\n"
          "Examples:\n\n"
          "  robustcompress data list\n\n"
          "  robustcompress data verify mnist --data-dir ../shared/data\n\n"
          "  robustcompress data info cifar10 --train-limit 1000\n\n"
          "  robustcompress data download mnist --data-dir ./data"),
    no_args_is_help=True,
)


def _console():
    from rich.console import Console

    return Console()


def _fmt_source(root: Path, src) -> str:
    """A found source, relative to its data root when possible."""
    if isinstance(src, dict):
        p, kind = next(iter(src.values())).parent, ""
    elif isinstance(src, tuple):
        p, kind = Path(src[1]), f" ({src[0]})"
    else:
        p, kind = Path(src), ""
    try:
        rel = p.relative_to(root).as_posix()
    except ValueError:
        rel = str(p)
    return f"{rel}{kind}"


@data_app.command("list")
def list_cmd(
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """List the datasets: shape, classes, bounds, and where each one was found.

    Example: robustcompress data list --data-dir ../shared/data
    """
    from rich.table import Table

    from robustcompress.data import DATASETS, find_dataset
    from robustcompress.data.roots import root_candidates

    cands, _ = root_candidates(data_dir)
    t = Table(title="datasets", caption="data roots searched: " + ", ".join(map(str, cands)))
    t.add_column("name", no_wrap=True)
    t.add_column("shape", no_wrap=True)
    t.add_column("classes")
    t.add_column("bounds", no_wrap=True)
    t.add_column("found", overflow="fold")
    for name, e in DATASETS.items():
        if name == "digits":
            found = "bundled (scikit-learn)"
        elif name in ("imagefolder", "tensors"):
            found = "pass --data-dir PATH"
        else:
            got = find_dataset(name, data_dir)
            found = (f"{_fmt_source(got[0], got[1])}\n[dim]in {got[0]}[/dim]" if got
                     else "[red]not found[/red]")
        t.add_row(name, str(tuple(e.shape)) if e.shape else "any", str(e.num_classes or "any"),
                  "given" if name == "tensors" else f"[{e.bounds[0]:g}, {e.bounds[1]:g}]", found)
    _console().print(t)


def _files_of(name: str, src) -> list[Path]:
    """The files of a found source that have (or may have) a known checksum."""
    if isinstance(src, dict):
        return [src[k] for k in sorted(src)]
    path = src[1] if isinstance(src, tuple) else src
    files = [Path(path)]
    if name == "speech_commands":
        from robustcompress.data.speech_commands import members_list

        ml = members_list(Path(path))
        if ml is not None:
            files.append(ml)
    return files


@data_app.command("verify")
def verify_cmd(
    name: Optional[str] = typer.Argument(None, help="Dataset to check (default: every one found)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Check the sha256/MD5 of the dataset files against the known checksums (re-hashes them).

    Exits with status 1 if a file is corrupted. Example: robustcompress data verify mnist
    """
    from rich.table import Table

    from robustcompress.data import DATASETS, find_dataset
    from robustcompress.data.integrity import known_checksum, verify_file
    from robustcompress.errors import DataError, UserInputError

    names = [name] if name else [n for n, e in DATASETS.items() if e.find is not None]
    if name and (name not in DATASETS or DATASETS[name].find is None):
        raise UserInputError(f"cannot verify {name!r}; choose one of "
                             f"{', '.join(n for n, e in DATASETS.items() if e.find)}")
    t = Table(title="checksums")
    for col in ("dataset", "file", "status", "sha256"):
        t.add_column(col)
    bad = 0
    for n in names:
        got = find_dataset(n, data_dir)
        if got is None:
            t.add_row(n, "-", "[yellow]not found[/yellow]", "")
            if name:
                bad += 1
            continue
        for f in _files_of(n, got[1]):
            if f.is_dir():
                t.add_row(n, str(f), "folder (no single checksum)", "")
                continue
            try:
                sha = verify_file(f, dataset=n, force=True)
                status = "[green]ok[/green]" if known_checksum(f) else "no known checksum"
                t.add_row(n, str(f), status, sha)
            except DataError as e:
                bad += 1
                t.add_row(n, str(f), "[red]MISSING[/red]" if not f.exists() else "[red]CORRUPTED[/red]",
                          str(e))
    _console().print(t)
    if bad:
        raise typer.Exit(1)


@data_app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help="Dataset name (see `robustcompress data list`)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    train_limit: Optional[int] = typer.Option(None, help="Load only a stratified subset of train."),
    test_limit: Optional[int] = typer.Option(None, help="Load only a stratified subset of test."),
) -> None:
    """Load a dataset and print its DatasetInfo, split sizes, class counts and notes.

    Example: robustcompress data info speech_commands
    """
    import time

    import torch
    from rich.table import Table

    from robustcompress.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(name, data_dir, train_limit=train_limit, test_limit=test_limit)
    secs = time.perf_counter() - t0
    i = ds.info
    rows = [("name", i.name), ("shape", str(i.shape)), ("classes", f"{i.num_classes}"),
            ("bounds", str(i.bounds)), ("modality", i.modality),
            ("sample rate", f"{i.sample_rate} Hz" if i.sample_rate else "-"),
            ("mean / std", f"{i.mean} / {i.std}"), ("source", str(ds.extra.get("source", "-"))),
            ("loaded in", f"{secs:.2f} s ({'cache hit' if ds.extra.get('cache_hit') else 'decoded'})"),
            ("note", i.note or "-")]
    splits = [("train", ds.train), ("test", ds.test)] + (
        [("val", ds.extra["val"])] if "val" in ds.extra else [])
    t = Table(title=f"{name}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows:
        t.add_row(k, v)
    _console().print(t)
    c = Table(title="class counts")
    c.add_column("class")
    for s, _ in splits:
        c.add_column(s, justify="right")
    counts = [torch.bincount(sp.y, minlength=i.num_classes).tolist() for _, sp in splits]
    for k, cls in enumerate(i.class_names):
        c.add_row(cls, *[str(cn[k]) for cn in counts])
    c.add_row("[bold]total[/bold]", *[str(len(sp)) for _, sp in splits])
    _console().print(c)


@data_app.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="mnist | cifar10 | speech_commands"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir",
                                           help="Where to put it (default: $ROBUSTCOMPRESS_DATA or ./data)."),
    extract: bool = typer.Option(False, help="Also unpack archives (loaders read them in place)."),
    force: bool = typer.Option(False, help="Download even if a verified copy exists."),
) -> None:
    """Download a canonical dataset and verify its checksum.

    Example: robustcompress data download mnist --data-dir ./data
    """
    import os

    from robustcompress.data.download import download
    from robustcompress.data.roots import ENV_VAR

    root = Path(data_dir or os.environ.get(ENV_VAR) or "data")
    for p in download(name, root, extract=extract, force=force):
        typer.echo(f"ok  {p}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
