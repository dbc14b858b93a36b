"""CLI command ``import-model``: turn your own model into a robustcompress checkpoint.

Thin: parses options, calls :func:`robustcompress.models.build_foreign` and
:func:`robustcompress.training.save_checkpoint`, prints one line. Every command taking
``--checkpoint`` then works with the model (see docs/foreign-models.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from robustcompress.errors import UserInputError


def _floats(text: Optional[str], option: str) -> Optional[list[float]]:
    """``"0.49,0.48,0.45"`` (commas or spaces) -> floats; None stays None."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UserInputError(f"{option} takes numbers separated by commas, e.g. {option} "
                             f"0.4914,0.4822,0.4465; got {text!r}") from None


def _kwargs(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"--kwargs must be a JSON object, e.g. '{{\"num_classes\": 10}}' ({e})") from None
    if not isinstance(kw, dict):
        raise UserInputError(f"--kwargs must be a JSON object of keyword arguments, got {text!r}")
    return kw


def import_model_cmd(
    factory: str = typer.Option(..., help="'package.module:function' or 'path/to/file.py:function' "
                                "returning the nn.Module."),
    weights: Optional[str] = typer.Option(None, help="State dict: .safetensors, or .pt/.pth/.bin "
                                          "written by torch.save(model.state_dict(), path)."),
    dataset: str = typer.Option("digits", help="Dataset the model classifies (see `robustcompress data list`)."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (imagefolder: the folder; tensors: the file)."),
    bounds: Optional[tuple[float, float]] = typer.Option(
        None, help="Input box the model takes: the dataset's (e.g. 0 1 for images). Required."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean the model expects its inputs "
                                       "normalised with, e.g. 0.4914,0.4822,0.4465 (omit if none)."),
    std: Optional[str] = typer.Option(None, help="Per-channel std of that normalisation."),
    kwargs: Optional[str] = typer.Option(None, "--kwargs", help="Factory keyword arguments as JSON, "
                                         "e.g. '{\"num_classes\": 10}'."),
    out: Path = typer.Option(..., "--out", help="Folder to write model.safetensors + model.json into."),
    limit: int = typer.Option(500, min=0, help="Test points for the clean-accuracy check (0: skip)."),
) -> None:
    """Import your own model (factory + weights + declared input) as a checkpoint.

    The model must take inputs in the dataset's box (--bounds); if it expects normalised inputs,
    --mean/--std put that normalisation inside the checkpoint. Weights are never unpickled as
    objects. The printed line ends with the clean accuracy on --limit test points: a wrong
    --mean/--std shows there.

    Example: robustcompress import-model --factory my_nets.py:resnet18 --weights w.pt \
    --dataset cifar10 --bounds 0 1 --mean 0.4914,0.4822,0.4465 --std 0.247,0.243,0.261 --out runs/mine
    """
    from robustcompress.data import load_dataset
    from robustcompress.models import build_foreign
    from robustcompress.training import evaluate_accuracy, save_checkpoint

    kw = _kwargs(kwargs)
    opts = {"bounds": bounds} if dataset == "tensors" and bounds is not None else {}
    data = load_dataset(dataset, root=data_dir, **opts)
    model = build_foreign(factory, data.info, kwargs=kw, weights=weights, mean=_floats(mean, "--mean"),
                          std=_floats(std, "--std"), bounds=bounds)
    acc = evaluate_accuracy(model, data.test.sample(limit), device="cpu") if limit else None
    meta = {"dataset": data.info.to_dict(), "imported": {"factory": model.robustcompress_spec["factory"],
            "weights": str(Path(weights).resolve()) if weights else None},
            "metrics": {} if acc is None else {"test_acc": acc, "test_points": min(limit, len(data.test))}}
    stem = save_checkpoint(model, Path(out) / "model", meta)
    n = sum(p.numel() for p in model.parameters())
    check = "" if acc is None else f"; clean accuracy {acc:.4f} on {min(limit, len(data.test))} test points"
    typer.echo(f"wrote {stem} ({factory}, {n:,} parameters, inputs in [{bounds[0]:g}, {bounds[1]:g}]"
               f"{', normalised inside' if mean else ''}){check}")


def register(app: typer.Typer) -> None:
    app.command("import-model")(import_model_cmd)
