"""Experiments: config schema, runner (resumable), SQLite results store, reports, sharding.

Python API::

    from robustcompress.experiments import load_config, run_experiment
    summary = run_experiment("configs/demo.yaml")
    plan = plan_experiment(load_config("configs/demo.yaml"))  # units and estimated time, first
"""

from robustcompress.experiments.api import demo_config_path, find_config, run_experiment  # noqa: F401
from robustcompress.experiments.collect import collect_metrics  # noqa: F401
from robustcompress.experiments.config import ExperimentConfig, expanded_dict, load_config, parse_config  # noqa: F401
from robustcompress.experiments.plan import Plan, plan_experiment  # noqa: F401
from robustcompress.experiments.store import ResultsStore, export_rows  # noqa: F401
