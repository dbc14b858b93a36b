"""Sharded evaluation under torchrun (2 CPU processes, gloo) equals the 1-process run exactly."""

import os
import subprocess
import sys

import pytest
import yaml

from robustcompress.experiments import ResultsStore, load_config, run_experiment
from robustcompress.experiments.distributed import batch_owner_indices

CONFIG = {
    "name": "dist",
    "seed": 5,
    "device": "cpu",  # as the 2-process run's --device cpu: gloo, and the same kernels on a GPU machine
    "dataset": {"name": "digits", "train_limit": 300},
    "model": {"name": "lenet300"},
    "training": {"epochs": 1, "optimizer": "adam", "lr": 0.003, "batch_size": 64},
    "defenses": [{"name": "sap", "method": "sap", "params": {"frac": 1.0}}],
    "evaluation": {
        "n_samples": 90, "batch_size": 20,  # 5 batches: uneven split over 2 ranks
        "threats": [{"norm": "linf", "eps": [0.1]}],
        "paper": [{"attack": "pgd", "steps": 3}],
        "adaptive": False, "mc_samples": 3,
    },
    "metrics": {"compression": False, "calibration": True},
}


def rows(out):
    with ResultsStore(out / "results.db") as s:
        res = s.results()
        met = s.metrics()
    keep = ("variant", "attack", "protocol", "eps_label", "run", "n", "robust_acc", "fooled_any", "clean_acc",
            "mean_norm")
    return (sorted(tuple(r[k] for k in keep) for r in res),
            sorted((m["variant"], m["key"], m["value"]) for m in met))


def test_round_robin_batches_cover_everything_once():
    seen = sorted(i for r in range(3) for i in batch_owner_indices(7, r, 3))
    assert seen == list(range(7))


@pytest.mark.dist
def test_two_process_gloo_evaluation_matches_single_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        (tmp_path / f"{out.name}.yaml").write_text(yaml.safe_dump({**CONFIG, "output_dir": str(out)}))
    run_experiment(load_config(tmp_path / "one.yaml"), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port itself (a port found here first could be taken by
    # a concurrent run before torchrun binds it)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robustcompress.cli", "run", str(tmp_path / "two.yaml"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rows(two) == rows(one)
