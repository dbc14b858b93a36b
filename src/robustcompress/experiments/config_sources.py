"""Where a run's model and data come from: the ``dataset`` and ``model`` sections of a config.

Besides zoo datasets and models, a config can bring the user's own: the ``tensors`` dataset
(``path``, declared ``bounds``, optional ``mean``/``std``/``num_classes``) and a model built by a
``factory`` with optional ``weights`` and a declared ``input`` (see docs/foreign-models.md).
File paths are relative to the config's folder (:func:`resolve_paths`); :func:`check_sources`
reports missing files, a factory that does not import and a box that is not the dataset's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Bounds = tuple[float, float]
TENSORS_ONLY = ("path", "bounds", "mean", "std", "num_classes")


class DatasetSection(_Strict):
    name: str = "digits"
    data_dir: Optional[str] = None
    train_limit: Optional[int] = Field(default=None, ge=1)
    test_limit: Optional[int] = Field(default=None, ge=1)
    # the `tensors` dataset (your own arrays): the file, its declared box, optional statistics
    path: Optional[str] = None  # relative to the config's folder
    bounds: Optional[Bounds] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    num_classes: Optional[int] = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _tensors_fields(self):
        given = [k for k in TENSORS_ONLY if getattr(self, k) is not None]
        if self.name != "tensors" and given:
            raise ValueError(f"{', '.join(given)}: only the tensors dataset takes these keys "
                             "(name: tensors, path: data.npz, bounds: [0, 1]); remove them")
        if self.name == "tensors" and (self.path is None or self.bounds is None):
            raise ValueError("the tensors dataset needs `path` (the .npz/.safetensors file) and "
                             "`bounds` (the box its inputs lie in, e.g. [0, 1]; never guessed)")
        return self

    def loader_options(self) -> dict[str, Any]:
        """Keyword options of :func:`robustcompress.data.load_dataset` beyond root and limits."""
        return {k: getattr(self, k) for k in TENSORS_ONLY[1:] if getattr(self, k) is not None}


class InputSection(_Strict):
    """The input space a foreign model takes: the dataset's box, and its normalisation if any."""

    bounds: Bounds
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None

    @model_validator(mode="after")
    def _pair(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (the model's input normalisation) or neither")
        return self


class ModelSection(_Strict):
    name: str = "lenet5"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[str] = None  # start from a trained checkpoint instead of training
    # your own model (docs/foreign-models.md): "pkg.module:fn" or "file.py:fn" (relative to the
    # config's folder), optional weights (.safetensors/.pt state dict) and the declared input
    factory: Optional[str] = None
    weights: Optional[str] = None
    input: Optional[InputSection] = None
    # a factory model with weights is the trained base as it is; true: train it with `training`
    fine_tune: bool = False

    @model_validator(mode="after")
    def _foreign(self):
        if self.fine_tune and (self.factory is None or self.weights is None):
            raise ValueError("fine_tune applies to a factory model with weights; remove it (other "
                             "models are trained with `training` anyway)")
        if self.factory is None:
            extra = [k for k in ("weights", "input") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only a model given by `factory` takes these "
                                 "(zoo models normalise inside; use `checkpoint` for a trained one)")
            return self
        if "name" in self.model_fields_set:
            raise ValueError("give either name (a zoo model) or factory (your own model), not both")
        if self.checkpoint is not None:
            raise ValueError("give either checkpoint or factory (+ weights), not both")
        if self.input is None:
            raise ValueError("a factory model must declare its input: `input: {bounds: [0, 1]}` "
                             "(the dataset's box) plus mean/std if it expects normalised inputs")
        return self


FOREIGN_KEYS = ("factory", "weights", "input", "fine_tune")


def build_base(m: ModelSection, info):
    """The base architecture before training: a zoo model, or the user's factory model (with
    its weights, if given, and its declared input; see docs/foreign-models.md)."""
    from robustcompress.models import build_foreign, build_model

    if m.factory is None:
        return build_model(m.name, info, **m.kwargs)
    return build_foreign(m.factory, info, kwargs=m.kwargs, weights=m.weights,
                         mean=m.input.mean, std=m.input.std, bounds=m.input.bounds)


def file_digest(path: str) -> str:
    """sha256 of a file (read in 1 MiB chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_dict(section: BaseModel) -> dict[str, Any]:
    """``section.model_dump()`` without the bring-your-own keys left at their defaults, so the unit
    keys of runs made before those keys existed stay the same (and resume)."""
    new = TENSORS_ONLY if isinstance(section, DatasetSection) else FOREIGN_KEYS
    return {k: v for k, v in section.model_dump().items() if not (k in new and v in (None, False))}


def resolve_paths(cfg, base_dir: Path):
    """``cfg`` with its user file paths absolute (relative ones start at ``base_dir``)."""
    from robustcompress.errors import UserInputError
    from robustcompress.models.foreign import resolve_factory, user_path

    def absolute(p: Optional[str]) -> Optional[str]:
        return None if p is None else str(user_path(p, base_dir))

    m, d = cfg.model, cfg.dataset
    factory = m.factory
    if factory is not None:
        try:
            factory = resolve_factory(factory, base_dir)
        except UserInputError:
            pass  # malformed: reported by the checks with its line
    model = m.model_copy(update={"factory": factory, "weights": absolute(m.weights)})
    dataset = d.model_copy(update={"path": absolute(d.path)})
    return cfg.model_copy(update={"model": model, "dataset": dataset})


def dataset_bounds(cfg) -> Optional[tuple[float, float]]:
    """The declared box of the config's dataset (None for an unknown dataset)."""
    from robustcompress.data import DATASETS

    if cfg.dataset.name == "tensors":
        return cfg.dataset.bounds
    entry = DATASETS.get(cfg.dataset.name)
    return None if entry is None else tuple(entry.bounds)


def check_sources(cfg, where) -> list[str]:
    """The user's files exist and the factory imports; a factory's box is the dataset's."""
    from robustcompress.errors import UserInputError
    from robustcompress.models.foreign import load_factory

    out = []
    m, d = cfg.model, cfg.dataset
    for loc, p, what in ((("model", "weights"), m.weights, "weights file"),
                         (("dataset", "path"), d.path, "tensors file")):
        if p is not None and not Path(p).is_file():
            out.append(f"{where(loc)}: {'.'.join(loc)}: {what} {p} not found; paths are relative "
                       "to the config's folder")
    if m.factory is not None:
        try:
            load_factory(m.factory)
        except UserInputError as e:
            out.append(f"{where(('model', 'factory'))}: model.factory: {e}")
        box = dataset_bounds(cfg)
        if m.input is not None and box is not None and tuple(map(float, m.input.bounds)) != tuple(box):
            out.append(f"{where(('model', 'input', 'bounds'))}: model.input.bounds: "
                       f"{list(m.input.bounds)} is not the dataset's box {list(box)}; eps is measured in "
                       "the dataset's units, so declare that box (rescale inside via mean/std)")
    return out
