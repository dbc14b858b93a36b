"""MLflow logging (optional extra): the calls our logger makes, checked against a recording stub.

mlflow itself is not installed here (it is an optional extra), so a stand-in module records what
would be logged; without mlflow, enabling it is a clear ConfigError.
"""

import sys
import types
from pathlib import Path

import pytest

from robustcompress.errors import ConfigError
from robustcompress.experiments.config import parse_config
from robustcompress.experiments.mlflow_log import log_run
from robustcompress.experiments.report import ReportData

CFG = {"name": "m", "dataset": {"name": "digits"}, "training": {"epochs": 1},
       "mlflow": {"enabled": True, "experiment": "exp"}}


def data():
    rows = [{"variant": "base", "protocol": "paper", "attack": "fgsm", "eps_label": "0.1", "run": 0,
             "robust_acc": 0.5}]
    return ReportData("m", ["base"], rows, {"base": {"exported_bytes": {"value": 100.0, "extra": {}}}})


def test_logs_params_metrics_and_artifacts(tmp_path, monkeypatch):
    calls = []
    stub = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "log_params", "log_metric", "log_artifact",
                 "log_artifacts"):
        setattr(stub, name, lambda *a, _n=name, **k: calls.append((_n, a, k)))

    class Run:
        def __enter__(self):
            calls.append(("start_run", (), {}))

        def __exit__(self, *exc):
            calls.append(("end_run", (), {}))

    stub.start_run = lambda **k: Run()
    monkeypatch.setitem(sys.modules, "mlflow", stub)
    (tmp_path / "report.md").write_text("x")
    paths = {"md": tmp_path / "report.md", "plots": tmp_path}
    log_run(parse_config(CFG), data(), None, paths)
    names = [c[0] for c in calls]
    assert names[0] == "set_experiment" and calls[0][1] == ("exp",)
    assert names.index("start_run") < names.index("log_params") < names.index("end_run")
    metrics = {c[1][0]: c[1][1] for c in calls if c[0] == "log_metric"}
    assert metrics == {"base.paper.fgsm.0.1": 0.5, "base.exported_bytes": 100.0}
    assert ("log_artifact", (str(Path(tmp_path / "report.md")),), {}) in calls


def test_enabled_without_mlflow_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'robustcompress\[mlflow\]'"):
        log_run(parse_config(CFG), data(), None, {"md": Path("r.md"), "plots": Path(".")})
