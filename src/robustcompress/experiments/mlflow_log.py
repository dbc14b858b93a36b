"""Optional MLflow logging of a finished run (``pip install robustcompress[mlflow]``)."""

from __future__ import annotations

import re

from robustcompress.errors import ConfigError


def _key(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", s)[:250]


def log_run(cfg, data, summary, paths) -> None:
    """Log params (the expanded config), every result as a metric, and the report as artifacts."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("mlflow.enabled is true but mlflow is not installed; "
                          "run `pip install 'robustcompress[mlflow]'` or set mlflow.enabled: false") from None
    if cfg.mlflow.tracking_uri:
        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.mlflow.experiment or cfg.name)
    with mlflow.start_run(run_name=cfg.name):
        flat = {"dataset": cfg.dataset.name, "model": cfg.model.name, "seed": cfg.seed,
                "defenses": ",".join(d.name for d in cfg.defenses)}
        flat.update({f"train.{k}": v for k, v in cfg.training.items()})
        mlflow.log_params(flat)
        for r in data.results:
            if r["robust_acc"] is not None:
                mlflow.log_metric(_key(f"{r['variant']}.{r['protocol']}.{r['attack']}.{r['eps_label']}"),
                                  r["robust_acc"], step=r["run"])
        for v, ms in data.metrics.items():
            for k, m in ms.items():
                if m["value"] is not None:
                    mlflow.log_metric(_key(f"{v}.{k}"), m["value"])
        mlflow.log_artifact(str(paths["md"]))
        if "html" in paths:
            mlflow.log_artifact(str(paths["html"]))
        mlflow.log_artifacts(str(paths["plots"]), artifact_path="plots")
