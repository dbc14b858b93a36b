"""The training state :func:`robustcompress.training.fit` resumes from: the model and
optimiser tensors of the last finished epoch (``state-eN.safetensors``, its sha256 recorded) and
``state.json`` (epoch, config, history, RNG scheme), plus the model checkpoint when the model can
be rebuilt. Written after every epoch, atomically; verified and refused with one message when it
was changed or belongs to another config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from robustcompress.errors import ConfigError, DataError
from robustcompress.training.checkpoint import (
    atomic_save_json,
    atomic_save_tensors,
    save_checkpoint,
    weights_mismatch,
)
from robustcompress.training.config import TrainConfig


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data order / global-RNG fork of 0-based ``epoch`` (pure; 63-bit)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


def optim_to_files(opts: dict[str, torch.optim.Optimizer]) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {}
    js: dict[str, Any] = {}
    for gname, opt in opts.items():
        sd = opt.state_dict()
        scalars: dict[str, dict] = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim/{gname}/{idx}/{k}"] = v
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        js[gname] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, js


def optim_from_files(opts: dict[str, torch.optim.Optimizer], tensors: dict, js: dict) -> None:
    for gname, opt in opts.items():
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            parts = key.split("/")
            if parts[0] == "optim" and parts[1] == gname:
                state.setdefault(int(parts[2]), {})[parts[3]] = v
        for idx, sc in js[gname]["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        opt.load_state_dict({"state": state, "param_groups": js[gname]["param_groups"]})


# ----------------------------------------------------------------------------- checkpoints

#: Settings that change how a step runs, not the run: they may differ when resuming.
EXECUTION_KEYS = ("epochs", "amp", "amp_dtype", "channels_last", "compile", "data_parallel",
                  "data_on_device", "deterministic")


def config_key(config: TrainConfig) -> dict:
    d = config.model_dump()
    for k in EXECUTION_KEYS:
        d.pop(k, None)
    return d


def save_state(ckdir: Path, epoch: int, model: nn.Module, opts, config: TrainConfig,
                history: list, objective, info) -> None:
    otensors, ojs = optim_to_files(opts)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(otensors)
    name = f"state-e{epoch}.safetensors"
    sha = atomic_save_tensors(tensors, ckdir / name)
    atomic_save_json({"epoch": epoch, "tensors": name, "weights_sha256": sha,
                      "config": config.model_dump(),
                      "history": history, "optim": ojs, "objective": repr(objective),
                      "rng": {"scheme": "per-epoch generator + fork_rng",
                              "next_epoch_seed": epoch_seed(config.seed, epoch)}},
                     ckdir / "state.json")
    for old in ckdir.glob("state-e*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    if hasattr(model, "robustcompress_spec"):
        save_checkpoint(model, ckdir / "model", {
            "config": config.model_dump(), "dataset": info.to_dict(), "epoch": epoch,
            "metrics": history[-1] if history else {}, "history": history,
        })


def load_state(ckdir: Path, model: nn.Module, opts, config: TrainConfig) -> tuple[int, list]:
    try:
        st = json.loads((ckdir / "state.json").read_text())
        path = ckdir / st["tensors"]
        bad = weights_mismatch(path, st) if path.is_file() else "the file is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        bad = f"{type(e).__name__}: {e}"
        path = ckdir / "state.json"
    if bad:
        raise DataError(f"training state {path} cannot be resumed ({bad}): it was modified or "
                        "corrupted; delete the folder's state files or use resume=False "
                        "(--no-resume) to train from the start")
    if config_key(TrainConfig(**st["config"])) != config_key(config):
        raise ConfigError(
            f"{ckdir} holds a run with a different training config ({st['config']}); use another "
            "checkpoint directory or resume=False (--no-resume) to start over")
    tensors = load_file(str(path))
    mstate = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(mstate, strict=True)
        optim_from_files(opts, tensors, st["optim"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{ckdir} holds a checkpoint of another model or objective "
                          f"({str(e).splitlines()[0]}); use another directory or resume=False") from None
    return int(st["epoch"]), list(st["history"])


# ----------------------------------------------------------------------------- one step
