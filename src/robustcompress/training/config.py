"""Training settings (validated; unknown keys are rejected) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


#: Options proven not to change a trained model (bit-identical either way; tests compare them):
#: the identity of a trained model (run-folder keys, fit folders) leaves them out, so setting one
#: in a config never retrains a model that is already there.
RESULT_NEUTRAL = ("data_on_device",)


def model_identity(training: Mapping[str, Any]) -> dict:
    """``training`` (a config's ``training`` section or a dumped TrainConfig) as it identifies a
    trained model: without the result-neutral options (keys made before they existed still match)."""
    return {k: v for k, v in training.items() if k not in RESULT_NEUTRAL}


class TrainConfig(BaseModel):
    """Everything that decides a training run, so that a seed reproduces it exactly.

    Defaults (Adam, lr 1e-3, batch 128, no schedule) train LeNet-5 to >= 98.5% on MNIST in
    2 epochs and to >= 95% on the 8x8 digits; the papers' recipes are set explicitly in configs.

    Execution options (``amp``, ``amp_dtype``, ``channels_last``, ``compile``, ``data_parallel``,
    ``data_on_device``, ``deterministic``) change how a step runs, not what it optimises; a run
    may resume with others. ``data_on_device``: ``"auto"`` keeps the training split on a CUDA device when it
    takes at most half its free memory (float32: 615 MB for CIFAR-10), ``True`` always (a
    ConfigError when it does not fit; on CPU the same code path, a no-op), ``False`` never;
    batches and augmentation are bit-identical either way (:mod:`robustcompress.training.resident`).
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(2, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "step", "multistep", "cosine"] = "none"
    step_size: int = Field(30, ge=1, description="epochs between decays for schedule='step'")
    milestones: list[int] = Field(default_factory=list, description="epochs for 'multistep'")
    gamma: float = Field(0.1, gt=0)
    hflip: Union[bool, Literal["auto"]] = "auto"
    # Random crop of image training batches (robustcompress.training.augment): pad each image by
    # crop_padding pixels of value 0 per side, keep a random window of the original size; 4 is the
    # usual CIFAR recipe (He et al., ANP-VS; Madry's uses 2), with flips. 0 = off, the default (the
    # recipe of every result recorded before crops existed). Images only (ConfigError otherwise).
    crop_padding: int = Field(0, ge=0, description="random-crop padding in pixels (0 = off)")
    seed: int = 0
    eval_batch_size: int = Field(512, ge=1)
    max_batches_per_epoch: Optional[int] = Field(None, ge=1)
    # Execution options (see robustcompress.training.accel): how the step runs, not what it
    # optimises. batch_size is the GLOBAL batch under torchrun (split over the ranks).
    amp: bool = Field(False, description="autocast the training forward (bf16/fp16; not attacks)")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    channels_last: bool = Field(False, description="NHWC memory format for 4-D inputs and convs")
    compile: bool = Field(False, description="torch.compile the model for the training step")
    data_on_device: Union[bool, Literal["auto"]] = Field(
        "auto", description="keep the training split on the training device and gather batches "
        "there: auto = on a CUDA device when it fits (robustcompress.training.resident)")
    deterministic: bool = Field(
        True, description="on CUDA, deterministic cuDNN kernels while training, so a seed "
        "reproduces the run (robustcompress.training.accel); False = cuDNN's faster choice")
    data_parallel: Optional[bool] = Field(
        None, description="under torchrun: None/True = split every batch over the processes and "
        "average gradients; False = every process trains its own full copy")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule='multistep' needs milestones, e.g. [150, 250]")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        return self

    def flip_enabled(self, dataset_name: str) -> bool:
        """Random horizontal flips: ``"auto"`` turns them on for CIFAR-10 only."""
        return dataset_name == "cifar10" if self.hflip == "auto" else bool(self.hflip)


def _check_fractions(v: list[float]) -> list[float]:
    if any(not 0.0 < f < 1.0 for f in v):
        raise ValueError(f"lr_steps are fractions of training in (0, 1), e.g. [0.5, 0.7]; got {v}")
    return v


#: A defense parameter: fractions of its training at which the learning rate is multiplied by 0.1.
LrSteps = Annotated[list[float], AfterValidator(_check_fractions)]


def fraction_milestones(epochs: int, fractions) -> list[int]:
    """Epoch milestones at ``fractions`` of an ``epochs``-long run (at least epoch 1, strictly
    inside the run, increasing, no repeats): e.g. (0.5, 0.7) of 200 epochs -> [100, 140], the
    ANP-VS LeNet schedule. Too short a run for any step gives []."""
    ms = sorted({max(1, int(epochs * f)) for f in fractions})
    return [m for m in ms if m < epochs]


def recipe_overrides(epochs: int, lr_steps=(), weight_decay: Optional[float] = None) -> dict:
    """TrainConfig fields for a stage's recipe: learning rate x0.1 at each fraction of training in
    ``lr_steps`` (e.g. (0.5, 0.7), the ANP_VS code's LeNet schedule) and an L2 ``weight_decay``
    (None leaves the run's setting). Empty when neither is given."""
    out = {} if weight_decay is None else {"weight_decay": weight_decay}
    ms = fraction_milestones(epochs, lr_steps)
    if ms:
        out.update(schedule="multistep", milestones=ms, gamma=0.1)
    return out


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of the base learning rate during 0-based ``epoch`` (constant within an epoch).

    A pure function of (config, epoch), so resuming needs no scheduler state.
    """
    if config.schedule == "step":
        return config.gamma ** (epoch // config.step_size)
    if config.schedule == "multistep":
        return config.gamma ** sum(epoch >= m for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(config.epochs, 1)))
    return 1.0
