"""Checks of a whole config that need more than one key: run before any training.

:func:`check_config` returns one message per problem (``FILE (line N): key.path: what; fix``),
collected with the schema and registry checks of :mod:`robustcompress.experiments.config`:

* paper attack items: parameter names and values, by the attacks' own rule book
  (:func:`robustcompress.attacks.registry.validate_attack_params`, strict: ``steps >= 1``);
* every eps in the file (threats, defenses' ``eps`` / ``adversarial_eps``) parses in the
  dataset's box and fits it (Linf: the box width; L2: its diameter when the shape is known);
* the defense graph has no cycle (``a -> b -> a``), and the grids expand to at most
  :data:`MAX_VARIANTS` variants (counted as a product, never expanded).

Also :func:`load_yaml` (refuses a key written twice in one mapping) and :func:`safe_run_name`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Optional

import yaml

from robustcompress.errors import ConfigError, UserInputError

#: Most variants the grids of one config may expand to (all defenses together).
MAX_VARIANTS = 10_000
#: Keys of defense parameters that are an eps in input units, and the norm they are measured in
#: (None: the defense's own ``norm`` parameter).
EPS_KEYS = (("eps", None), ("adversarial_eps", "linf"))

Where = Callable[[tuple], str]


# ---------------------------------------------------------------------------------- YAML, name
class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key written twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may be overridden on purpose
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> tuple[Any, Optional[yaml.Node]]:
    """The data of a YAML document and its node tree (for line numbers). Raises
    :class:`ConfigError` for invalid YAML and for a key given twice in one mapping."""
    try:
        root = yaml.compose(text)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        first = "earlier on the same line" if e.first == e.again else f"first at line {e.first}"
        raise ConfigError(f"{source} (line {e.again}): duplicate key {e.key!r} ({first}) in the same "
                          "mapping; YAML would silently keep only the last value, so remove one of "
                          "them (or merge their values)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    return data, root


def safe_run_name(name: str) -> str:
    """``name`` if it is one safe folder name (it becomes ``runs/<name>``), else ValueError.

    An explicit ``output_dir`` may be any folder: the user chose it. The name, though, is a label
    that would silently write elsewhere (``../..``, ``/etc``, ``a/b``), so it is refused."""
    bad = [c for c in "/\\:\0" if c in name]
    if not name.strip() or name in (".", "..") or bad or name != name.strip() or not name.isprintable():
        raise ValueError(
            f"{name!r} is not a usable run name: it names the folder runs/<name>, so it must be one "
            "folder name (no / \\ :, not . or .., no surrounding spaces); to write elsewhere set "
            "output_dir (any path) or pass --out")
    return name


# ------------------------------------------------------------------------------------- checks
def check_config(cfg, where: Where) -> list[str]:
    """Every cross-key problem of ``cfg`` (see the module docstring); empty when it is fine."""
    return (check_defense_graph(cfg, where) + check_grids(cfg, where)
            + check_paper_attacks(cfg, where) + check_eps(cfg, where) + check_standard_subset(cfg, where))


def check_standard_subset(cfg, where: Where) -> list[str]:
    """``standard_samples`` is a subset of the evaluation points."""
    n_std, n = cfg.evaluation.standard_samples, cfg.evaluation.n_samples
    if n_std is None or n_std <= n:
        return []
    return [f"{where(('evaluation', 'standard_samples'))}: evaluation.standard_samples: {n_std} is more "
            f"than the {n} evaluation points (n_samples); use at most {n}, or omit it for all of them"]


def check_defense_graph(cfg, where: Where) -> list[str]:
    """Each cycle of ``base:`` references once, named ``a -> b -> a``."""
    base_of = {d.name: d.base for d in cfg.defenses}
    index = {d.name: i for i, d in enumerate(cfg.defenses)}
    out, reported = [], set()
    for d in cfg.defenses:
        path = [d.name]
        while base_of.get(path[-1]) in base_of and base_of[path[-1]] not in path:
            path.append(base_of[path[-1]])
        nxt = base_of.get(path[-1])
        if nxt not in path:
            continue  # ends at 'base' (or at a missing name, reported by the schema)
        cycle = path[path.index(nxt):]
        if frozenset(cycle) in reported:
            continue
        reported.add(frozenset(cycle))
        first = min(cycle, key=index.__getitem__)
        k = cycle.index(first)
        ring = cycle[k:] + cycle[:k] + [first]
        i = index[first]
        out.append(f"{where(('defenses', i, 'base'))}: defenses[{i}].base: the defenses build on each "
                   f"other in a cycle {' -> '.join(ring)}, so none of them can be trained first; "
                   "make one of them start from 'base' or from a defense outside the cycle")
    return out


def grid_size(grid: dict[str, list]) -> int:
    """Variants a ``grid:`` expands to (1 without a grid), as a product: nothing is expanded."""
    return math.prod(len(v) for v in grid.values()) if grid else 1


def check_grids(cfg, where: Where) -> list[str]:
    """Empty value lists (they would expand to nothing) and more than :data:`MAX_VARIANTS` in all."""
    out = []
    for i, d in enumerate(cfg.defenses):
        for key, values in d.grid.items():
            if not values:
                out.append(f"{where(('defenses', i, 'grid', key))}: defenses[{i}].grid.{key}: an empty "
                           "list expands to no variant; give at least one value or remove the key")
    sizes = [grid_size(d.grid) for d in cfg.defenses]
    total = sum(sizes)
    if total > MAX_VARIANTS:
        i = max(range(len(sizes)), key=sizes.__getitem__)
        out.append(f"{where(('defenses', i, 'grid'))}: defenses: the grids expand to {total:,} variants "
                   f"(defenses[{i}] alone: {sizes[i]:,}), more than the {MAX_VARIANTS:,} one config may "
                   "train and attack; use fewer values per grid key, or split the sweep over configs")
    return out


def check_paper_attacks(cfg, where: Where) -> list[str]:
    """Each paper item's parameters, by :func:`~robustcompress.attacks.registry.validate_attack_params`
    (one call per key, so each message carries its key's line)."""
    from robustcompress.attacks import list_attacks
    from robustcompress.attacks.registry import validate_attack_params

    attacks = list_attacks()
    out = []
    for i, item in enumerate(cfg.evaluation.paper):
        if item.attack not in attacks:
            continue  # reported with the registries
        params = item.attack_params()
        if item.attack == "transfer":  # the runner's names: surrogate is a variant, craft* renamed
            params.pop("surrogate", None)
            params = {{"craft": "attack", "craft_params": "attack_params"}.get(k, k): v for k, v in params.items()}
        written = {"attack": "craft", "attack_params": "craft_params"} if item.attack == "transfer" else {}
        for key, value in params.items():
            sub = {key: value}
            if key == "attack_params":
                sub["attack"] = params.get("attack", "pgd")
            elif key == "attack" and "attack_params" in params:
                continue  # checked with attack_params
            for msg in validate_attack_params(item.attack, sub, strict=True):
                name = written.get(key, key)
                out.append(f"{where(('evaluation', 'paper', i, name))}: evaluation.paper[{i}].{name}: {msg}")
    return out


def check_eps(cfg, where: Where) -> list[str]:
    """Every eps of the file parses in the dataset's box and fits it. (``adaptive_eps`` and
    ``report.main_eps`` must name a threat eps, checked with the registries, so they are covered.)"""
    from robustcompress.data import DATASETS
    from robustcompress.experiments.config_sources import dataset_bounds

    if cfg.dataset.name not in DATASETS:  # reported elsewhere
        return []
    bounds = dataset_bounds(cfg)
    # The catalog knows the sample shape of the built-in datasets; for `tensors` and `imagefolder`
    # it is only known once the files are read, so only the L2 diameter check is skipped there.
    shape = tuple(DATASETS[cfg.dataset.name].shape) or None
    out = []
    for i, t in enumerate(cfg.evaluation.threats):
        for j, eps in enumerate(t.eps):
            msg = _eps_problem(t.norm, eps, t.eps_scale, bounds, shape)
            if msg:
                loc = ("evaluation", "threats", i, "eps", j)
                out.append(f"{where(loc)}: evaluation.threats[{i}].eps[{j}]: {msg}")
    for i, d in enumerate(cfg.defenses):
        out += _defense_eps(i, d, bounds, shape, where)
    return out


def _defense_eps(i: int, d, bounds, shape, where: Where) -> list[str]:
    """The eps parameters of defense ``i`` (its effective value, or every grid value)."""
    from pydantic import ValidationError

    from robustcompress.defenses import list_defenses

    spec = list_defenses().get(d.method)
    if spec is None:
        return []
    try:
        params = spec.Params(**d.params)
    except ValidationError:
        return []  # reported with the registries
    fields = spec.Params.model_fields
    out = []
    for key, fixed_norm in EPS_KEYS:
        if key not in fields:
            continue
        in_grid = key in d.grid
        values = d.grid[key] if in_grid else [getattr(params, key)]
        norms = [fixed_norm] if fixed_norm else (d.grid.get("norm") or [getattr(params, "norm", "linf")])
        scale = getattr(params, "eps_scale", None)
        for j, eps in enumerate(values):
            msgs = {m for norm in norms if eps is not None
                    for m in [_eps_problem(norm, eps, scale, bounds, shape)] if m}
            loc = ("defenses", i, "grid", key, j) if in_grid else ("defenses", i, "params", key)
            path = f"defenses[{i}].grid.{key}[{j}]" if in_grid else f"defenses[{i}].params.{key}"
            out += [f"{where(loc)}: {path}: {m}" for m in sorted(msgs)]
    return out


def _eps_problem(norm: str, eps, scale, bounds, shape) -> str:
    """Why ``eps`` does not fit the box (empty: it fits): units, Linf width, L2 diameter."""
    from robustcompress.attacks import ThreatModel

    try:
        threat = ThreatModel.from_spec(norm=norm, eps=eps, bounds=bounds, eps_scale=scale)
        if shape is not None:
            replace(threat, shape=shape)  # re-validated: L2 eps at most the box's diameter
    except (UserInputError, ValueError, TypeError) as e:
        return str(e)
    return ""
