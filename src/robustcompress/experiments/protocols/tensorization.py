"""Bulat et al. (2021), "Defensive tensorization": Tucker-factorise every conv/linear layer with a
randomised rank at test time (optionally XNOR-binarised and fine-tuned), and compare parameters,
MACs, exported bytes and accuracy before and after."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from robustcompress.errors import UserInputError


@dataclass
class TensorizeOptions:
    rank: str = "1.0"
    theta: float = 0.9
    modes: Optional[str] = None
    binary: bool = False
    keep_first_last: bool = True
    execution: str = "factorized"
    granularity: str = "batch"
    rescale: str = "unbiased"
    init: str = "hosvd"
    finetune_epochs: int = 0
    adversarial_eps: Optional[str] = None
    lr: float = 1e-3
    batch_size: int = 128


@dataclass
class TensorizeResult:
    """``before``/``after``: {"params", "macs", "bytes", "acc"}; the written checkpoint."""

    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None


def parse_rank(text: str):
    """``0.5`` (fraction of each channel dim), ``16`` (absolute) or ``16,8,3,3`` (per mode)."""
    def one(t: str):
        t = t.strip()
        if t.lower() in ("none", "full", ""):
            return None
        try:
            return float(t) if "." in t else int(t)
        except ValueError:
            raise UserInputError(
                f"--rank {text!r} is not a number; give a fraction like 0.5, an int like 16 or "
                "one value per mode like 16,8,3,3") from None
    parts = text.split(",")
    return one(parts[0]) if len(parts) == 1 else [one(p) for p in parts]


def _figures(model, info) -> dict:
    from robustcompress.metrics.compression import count_macs, count_parameters, exported_bytes

    return {"params": count_parameters(model), "macs": count_macs(model, info.shape),
            "bytes": exported_bytes(model)}


def tensorize_checkpoint(checkpoint: str, out: str, *, options: TensorizeOptions,
                         limit: Optional[int] = 1000, mc: int = 10,
                         data_dir: Optional[str] = None, train_limit: Optional[int] = None,
                         device: str = "auto", seed: int = 0,
                         progress: bool = True) -> TensorizeResult:
    """Tensorize ``checkpoint`` into the run folder ``out`` (``OUT/model``); accuracy of a
    stochastic result is the mean prediction over ``mc`` draws on ``limit`` test points.

    Fine-tuning (``finetune_epochs``, or 1 epoch with ``adversarial_eps``) trains with the
    command's own recipe, not the checkpoint's: TrainConfig's defaults (Adam, flips on CIFAR-10
    only, no crops: the paper's "random horizontal flipping" only) at ``options.lr`` and
    ``options.batch_size``. Inside ``robustcompress run`` the ``tensorization`` defense trains
    with the run's recipe instead."""
    import torch

    from robustcompress.defenses.base import defense_records, replace_last_params
    from robustcompress.defenses.tensorization import tensorize, train_tensorized
    from robustcompress.experiments.protocols.loading import load_checkpoint_data
    from robustcompress.training import TrainConfig, evaluate_accuracy, save_checkpoint

    o = options
    rank_spec = parse_rank(o.rank)  # options first, before any slow loading
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, train_limit=train_limit,
                              test_limit=limit, device=device)
    base, data, dev = ld.model, ld.data, ld.device
    mode_t = tuple(int(m) for m in o.modes.split(",")) if o.modes else None
    tkw = dict(rank=rank_spec, modes=mode_t, keep_first_last=o.keep_first_last, binary=o.binary,
               execution=o.execution, granularity=o.granularity, rescale=o.rescale, init=o.init)
    torch.manual_seed(seed)  # the command owns its process's global RNG
    if o.finetune_epochs or o.adversarial_eps:
        cfg = TrainConfig(epochs=max(o.finetune_epochs, 1), lr=o.lr, batch_size=o.batch_size, seed=seed)
        model = train_tensorized(base, data, o.theta, config=cfg, adversarial_eps=o.adversarial_eps,
                                 device=dev, progress=progress, **tkw)
    else:
        model = tensorize(base, theta=o.theta, **tkw)
    replace_last_params(model, {**defense_records(model)[-1]["params"],
                                "finetune_epochs": o.finetune_epochs,
                                "adversarial": o.adversarial_eps is not None,
                                "adversarial_eps": o.adversarial_eps})
    gen = torch.Generator(device=dev).manual_seed(seed)
    res = TensorizeResult(_figures(base, data.info), _figures(model, data.info))
    res.before["acc"] = evaluate_accuracy(base, data.test, device=dev)
    res.after["acc"] = evaluate_accuracy(model, data.test, device=dev, mc_samples=mc, generator=gen)
    metrics = {"test_acc": res.after["acc"], **{k: v for k, v in res.after.items() if k != "acc"}}
    res.checkpoint = save_checkpoint(model, Path(out) / "model",
                                     meta={"metrics": metrics, "source": checkpoint})
    return res
