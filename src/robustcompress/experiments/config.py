"""Experiment configuration: a validated YAML schema and error locations (grid expansion lives in
:mod:`robustcompress.experiments.config_expand`; its names are re-exported here).

One YAML file describes the whole pipeline (see ``configs/demo.yaml``)::

    name: quickstart
    seed: 0
    dataset: {name: digits}
    model: {name: lenet5}
    training: {epochs: 10, optimizer: adam, lr: 0.001}
    defenses:
      - name: pgd_at                       # unique label of the variant
        method: adversarial_training       # a registered defense (robustcompress defenses)
        params: {eps: 0.3, steps: 10}
      - name: sap
        method: sap
        base: pgd_at                       # start from another variant (ADV+SAP); default: base
        grid: {frac: [1.0, 0.5]}           # expands into sap[frac=1.0], sap[frac=0.5]
    evaluation:
      n_samples: 500
      threats: [{norm: linf, eps: [0.05, 0.1, "8/255"]}]
      paper: [{attack: fgsm}, {attack: pgd, steps: 20}]
      adaptive: true

Validation errors name the key path, what is allowed, and the line in the file.
"""

from __future__ import annotations

import os
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robustcompress.errors import ConfigError
from robustcompress.experiments.config_checks import (
    MAX_VARIANTS,
    check_config,
    grid_size,
    load_yaml,
    safe_run_name,
)
from robustcompress.experiments.config_expand import (  # noqa: F401  (re-exported: older imports)
    expand_grid,
    expanded_dict,
    stable_hash,
    variant_label,
)
from robustcompress.experiments.config_sources import (  # noqa: F401  (part of this schema)
    DatasetSection,
    InputSection,
    ModelSection,
    _Strict,
    check_sources,
    dataset_bounds,
    resolve_paths,
)

EpsValue = Union[float, str]


class DefenseSection(_Strict):
    name: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    base: str = "base"
    training: dict[str, Any] = Field(default_factory=dict)  # overrides for fine-tuning

    @field_validator("name")
    @classmethod
    def _label(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\[]= ") or v == "base":
            raise ValueError("a defense name must be non-empty, not 'base', and contain no / \\ [ ] = or spaces")
        return v


class ThreatSection(_Strict):
    norm: Literal["linf", "l2"] = "linf"
    eps: list[EpsValue]
    eps_scale: Optional[float] = None  # e.g. 255 when eps are given on the 0-255 scale

    @field_validator("eps", mode="before")
    @classmethod
    def _listify(cls, v):
        return v if isinstance(v, list) else [v]


class AttackItem(BaseModel):
    """One attack of the paper protocol: ``attack`` plus any of its keyword parameters."""

    model_config = ConfigDict(extra="allow")
    attack: str
    eot: Optional[int] = Field(default=None, ge=1)  # gradient samples (paper protocol default 1)
    mc: Optional[int] = Field(default=None, ge=1)  # prediction samples (paper protocol default 1)
    norm: Optional[Literal["linf", "l2"]] = None  # restrict to threats of this norm

    def attack_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EvaluationSection(_Strict):
    n_samples: int = Field(default=500, ge=1)
    batch_size: int = Field(default=256, ge=1)
    runs: int = Field(default=1, ge=1)  # repeated runs (papers average stochastic models over 10)
    threats: list[ThreatSection] = Field(default_factory=list)
    paper: list[AttackItem] = Field(default_factory=list)
    adaptive: bool = True
    adaptive_eps: Optional[list[EpsValue]] = None  # default: every eps of every threat
    eot_samples: int = Field(default=20, ge=1)
    mc_samples: int = Field(default=20, ge=1)
    apgd_steps: int = Field(default=100, ge=1)
    square_queries: int = Field(default=1000, ge=0)
    checks: bool = True  # gradient-masking checks (Carlini et al. 2019) in the adaptive evaluation
    check_samples: int = Field(default=256, ge=1)
    check_steps: int = Field(default=20, ge=1)
    minimal: list[Literal["deepfool", "cw"]] = Field(default_factory=list)  # r_2 attacks
    transfer_from: Optional[str] = "base"  # surrogate for transfer attacks (a variant name or null)
    # grow EOT (from eot_samples) and APGD steps x2 until the adaptive number moves < converge_tol
    converge_eot: bool = False
    standard: bool = False  # AutoAttack's standard battery as its own column
    standard_eps: Optional[list[EpsValue]] = None  # default: the adaptive eps
    standard_samples: Optional[int] = Field(default=None, ge=1)  # stratified subset; default: all
    security: Optional[Literal["fmn", "fab", "deepfool"]] = None  # security curves from this attack
    eot_cap: int = Field(default=80, ge=1)
    converge_tol: float = Field(default=0.02, gt=0, lt=1)


class MetricsSection(_Strict):
    compression: bool = True
    calibration: bool = True
    vulnerability: bool = False
    clever: bool = False
    spectral: bool = True
    latency_batch: int = Field(default=32, ge=1)


class ReportSection(_Strict):
    html: bool = True
    main_eps: Optional[EpsValue] = None  # eps shown in the terminal leaderboard


class MlflowSection(_Strict):
    enabled: bool = False
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None


class PaperRow(BaseModel):
    """A value from a paper's table, printed beside ours by ``robustcompress reproduce``."""

    model_config = ConfigDict(extra="forbid")
    variant: str
    attack: str
    eps: Optional[EpsValue] = None
    value: float
    source: str = ""


class ExperimentConfig(_Strict):
    name: str = "experiment"
    description: str = ""
    seed: int = 0
    device: str = "auto"
    # CPU threads for torch (None: torch's default). Small models run fastest on 1 thread, and
    # several threads collapse when other processes share the cores (measured 40x slower).
    threads: Optional[int] = Field(default=None, ge=1)
    output_dir: Optional[str] = None  # any folder you choose; default runs/<name>
    dataset: DatasetSection
    model: ModelSection = Field(default_factory=ModelSection)
    training: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields
    defenses: list[DefenseSection] = Field(default_factory=list)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    report: ReportSection = Field(default_factory=ReportSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    paper_reference: list[PaperRow] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_run_name(v)

    @model_validator(mode="after")
    def _unique_names(self):
        seen: set[str] = set()
        for i, d in enumerate(self.defenses):
            if d.name in seen:
                raise ValueError(f"defenses[{i}].name: duplicate defense name {d.name!r}; names must be unique")
            seen.add(d.name)
        names = {d.name for d in self.defenses} | {"base"}
        for i, d in enumerate(self.defenses):
            if d.base not in names:
                raise ValueError(
                    f"defenses[{i}].base: {d.base!r} is not 'base' or the name of another defense "
                    f"({', '.join(sorted(names))})"
                )
        return self


# ----------------------------------------------------------------------------------------------
# Loading with line numbers


def _line_of(node: yaml.Node, loc: tuple) -> Optional[int]:
    """Line (1-based) of the YAML node at pydantic error location ``loc``, best effort."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            if nxt is None:
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _format_errors(err: ValidationError, root: Optional[yaml.Node], source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        path = ".".join(str(x) for x in loc) or "(top level)"
        where = ""
        if root is not None:
            ln = _line_of(root, loc)
            if ln:
                where = f" (line {ln})"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling (see `robustcompress config show` for all keys)"
        elif e["type"] == "literal_error":
            msg = f"{msg}"
        lines.append(f"{source}{where}: {path}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(data: dict, *, source: str = "<config>", root_node: Optional[yaml.Node] = None,
                 base_dir: Optional[str | Path] = None) -> ExperimentConfig:
    """Validate a config dict; raise one :class:`ConfigError` listing every problem.

    Relative file paths of the config (``model.factory`` files, ``model.weights``,
    ``dataset.path``) are made absolute against ``base_dir`` (the config's folder when loaded
    from a file; default: the current folder)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (name, dataset, model, ...)")
    try:
        cfg = ExperimentConfig(**data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, root_node, source)) from None
    cfg = resolve_paths(cfg, Path(base_dir) if base_dir is not None else Path.cwd())
    _check_registries(cfg, source, root_node)
    return cfg


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file (relative paths inside start at its folder)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; ready configs are in configs/ "
                          "(try `robustcompress config list`)")
    data, root = load_yaml(path.read_text(), str(path))
    cfg = parse_config(data or {}, source=str(path), root_node=root, base_dir=Path(os.path.abspath(path)).parent)
    if cfg.output_dir is None:
        cfg = cfg.model_copy(update={"output_dir": str(Path("runs") / cfg.name)})
    return cfg


def eps_label(eps: EpsValue, eps_scale: Optional[float]) -> str:
    """How a threat's eps is labelled in results and reports: as written, or ``eps/scale``."""
    return str(eps) if eps_scale is None else f"{eps}/{eps_scale:g}"


def _eps_number(text: str) -> float:
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def eps_matches(wanted: EpsValue, label: str) -> bool:
    """Whether an eps written in ``adaptive_eps`` / ``main_eps`` names the threat eps ``label``:
    the same value ("2/255" or 0.00784 match "2.0/255"; 0.1 matches "0.1") or, for a threat on a
    0..scale scale, the value on that scale (2 matches "2.0/255")."""
    try:
        w = _eps_number(str(wanted).strip())
        if math.isclose(w, _eps_number(label), rel_tol=1e-4, abs_tol=1e-12):
            return True
        return "/" in label and math.isclose(w, float(label.split("/", 1)[0]), rel_tol=1e-9)
    except ValueError:
        return False


def threat_eps_labels(cfg: "ExperimentConfig") -> list[str]:
    return [eps_label(e, t.eps_scale) for t in cfg.evaluation.threats for e in t.eps]


def _check_registries(cfg: ExperimentConfig, source: str, root) -> None:
    """Names that must exist in the registries (datasets, models, defenses, attacks, train keys)."""
    problems = []

    def where(loc):
        ln = _line_of(root, loc) if root is not None else None
        return f"{source}" + (f" (line {ln})" if ln else "")

    from robustcompress.data import list_datasets

    ds = list_datasets()
    if cfg.dataset.name not in ds:
        problems.append(f"{where(('dataset', 'name'))}: dataset.name: unknown dataset "
                        f"{cfg.dataset.name!r}; choose one of {', '.join(sorted(ds))}")
    from robustcompress.models import list_models

    models = list_models()
    problems += check_sources(cfg, where)
    if cfg.model.factory is None and cfg.model.name not in models:
        problems.append(f"{where(('model', 'name'))}: model.name: unknown model {cfg.model.name!r}; "
                        f"choose one of {', '.join(models)}")
    problems += _defense_problems(cfg, where)
    problems += _evaluation_problems(cfg, where)
    try:
        from robustcompress.training import TrainConfig

        TrainConfig(**cfg.training)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where(('training', key))}: training.{key}: {msg}")
    problems += check_config(cfg, where)  # attack parameters, eps, defense graph, grid size
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _defense_problems(cfg: ExperimentConfig, where) -> list[str]:
    """Defense methods that exist and parameters each grid combination's schema accepts."""
    from robustcompress.defenses import list_defenses

    problems = []
    defenses = list_defenses()
    for i, d in enumerate(cfg.defenses):
        if d.method not in defenses:
            problems.append(f"{where(('defenses', i, 'method'))}: defenses[{i}].method: unknown defense "
                            f"{d.method!r}; choose one of {', '.join(defenses)}")
            continue
        spec = defenses[d.method]
        if grid_size(d.grid) > MAX_VARIANTS:
            continue  # too large to expand: reported by check_config
        for combo in expand_grid(d.grid) or [{}]:
            try:
                spec.Params(**{**d.params, **combo})
            except ValidationError as e:
                for err in e.errors():
                    key = ".".join(str(x) for x in err["loc"])
                    fields = ", ".join(sorted(spec.Params.model_fields))
                    msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
                    problems.append(f"{where(('defenses', i, 'params', key))}: defenses[{i}].params.{key}: "
                                    f"{msg} (parameters of {d.method!r}: {fields})")
                break
    return problems


def _evaluation_problems(cfg: ExperimentConfig, where) -> list[str]:
    """Evaluation names that must resolve: eps labels, transfer surrogates, attack names."""
    problems = []
    from robustcompress.attacks import list_attacks

    attacks = list_attacks()
    names = {"base"} | {d.name for d in cfg.defenses}
    labels = threat_eps_labels(cfg)
    for key, values in (("adaptive_eps", cfg.evaluation.adaptive_eps or []),
                        ("standard_eps", cfg.evaluation.standard_eps or []),
                        ("main_eps", [] if cfg.report.main_eps is None else [cfg.report.main_eps])):
        section = "report" if key == "main_eps" else "evaluation"
        for e in values:
            if not any(eps_matches(e, lab) for lab in labels):
                problems.append(f"{where((section, key))}: {section}.{key}: {e!r} is not one of the "
                                f"threats' eps ({', '.join(labels) or 'none'}); write one of those "
                                "(e.g. '8/255' for 8 on a 0-255 scale)")
    src = cfg.evaluation.transfer_from
    if src is not None and src.split("[")[0] not in names:
        problems.append(f"{where(('evaluation', 'transfer_from'))}: evaluation.transfer_from: {src!r} is "
                        f"not 'base' or a defense name ({', '.join(sorted(names))}); use null for no "
                        "transfer attacks")
    for i, a in enumerate(cfg.evaluation.paper):
        sur = a.attack_params().get("surrogate")
        if sur is not None and (not isinstance(sur, str) or sur.split("[")[0] not in names):
            problems.append(f"{where(('evaluation', 'paper', i, 'surrogate'))}: evaluation.paper[{i}].surrogate: "
                            f"{sur!r} is not 'base' or a defense name ({', '.join(sorted(names))}); "
                            "add e.g. {name: other, method: independent} for a separately trained model")
        if a.attack == "transfer" and sur is None and cfg.evaluation.transfer_from is None:
            problems.append(f"{where(('evaluation', 'paper', i))}: evaluation.paper[{i}]: the transfer "
                            "attack needs a surrogate; set `surrogate: VARIANT` on it or "
                            "evaluation.transfer_from")
        if a.attack not in attacks:
            problems.append(f"{where(('evaluation', 'paper', i, 'attack'))}: evaluation.paper[{i}].attack: "
                            f"unknown attack {a.attack!r}; choose one of {', '.join(sorted(attacks))}")
    return problems
