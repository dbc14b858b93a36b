"""Data-parallel fit under torch.distributed (2 CPU processes, gloo).

One spawn runs, on both ranks: an uninterrupted 3-epoch run (dir A), and a run that crashes at
the start of epoch 3 followed by a resume of the same call (dir B). Rank 1's checkpoint writer is
booby-trapped, so the run fails if any rank but 0 writes a checkpoint.
"""

import importlib
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit
from robustcompress.training import ddp

fit_module = importlib.import_module("robustcompress.training.fit")

CFG = dict(epochs=3, batch_size=64, optimizer="adam", lr=3e-3, seed=7)


def _data():
    return load_dataset("digits", train_limit=600, test_limit=300)


def _model(data, seed):
    torch.manual_seed(seed)
    return build_model("lenet300", data.info)


class Crash(RuntimeError):
    pass


class TwoGroups:
    """A two-optimizer objective (the ANP-VS shape): first layer vs the rest, own losses."""

    def param_groups(self, model):
        first = list(model.get_submodule("fc1").parameters())
        ids = {id(p) for p in first}
        return {"first": {"params": first, "lr": 1e-2, "optimizer": "sgd"},
                "rest": {"params": [p for p in model.parameters() if id(p) not in ids]}}

    def __call__(self, model, x, y):
        out = model(x)
        ce = torch.nn.functional.cross_entropy(out, y)
        return {"first": ce, "rest": ce + 0.01 * out.pow(2).mean()}

    def __repr__(self):
        return "TwoGroups()"


def _two_group_fit(data, seed):
    cfg = TrainConfig(**{**CFG, "epochs": 1})
    return fit(_model(data, seed), data, cfg, objective=TwoGroups(), progress=False).model


def _share_rank0_state(rank: int, out: str) -> None:
    """broadcast_state gives every rank rank 0's tensors, bool and non-contiguous ones included
    (what the runner does after replicas trained apart)."""
    m = torch.nn.Linear(3, 4)
    with torch.no_grad():
        m.weight.data = torch.full((3, 4), float(rank)).t()  # non-contiguous
        m.bias.fill_(rank)
    m.register_buffer("mask", torch.tensor([True, False, bool(rank), True]))
    ddp.broadcast_state(m, ddp.World(rank, 2))
    assert m.weight.shape == (4, 3)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{out}/S-rank{rank}.safetensors")


def _worker(rank: int, world: int, out: str) -> None:
    torch.set_num_threads(1)
    # a rendezvous file, not a port: a free port found first could be taken by a concurrent run
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=world)
    try:
        _share_rank0_state(rank, out)
        data = _data()
        if rank != 0:  # only rank 0 may write checkpoints
            def trap(*a, **k):
                raise AssertionError("a rank other than 0 wrote a checkpoint")
            fit_module.save_state = trap  # the name fit() calls (training.state.save_state)
        # different initialisations per rank: fit must start every rank from rank 0's weights
        res = fit(_model(data, 100 + rank), data, TrainConfig(**CFG), checkpoint_dir=f"{out}/A",
                  progress=False)
        save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
                  f"{out}/A-rank{rank}.safetensors")
        if rank == 0:
            with open(f"{out}/history.json", "w") as f:
                json.dump(res.history, f)

        g = _two_group_fit(data, 100 + rank)
        save_file({k: v.contiguous() for k, v in g.state_dict().items()},
                  f"{out}/G-rank{rank}.safetensors")

        real = fit_module._run_epoch

        def crashing(*a, **k):
            if a[8] == 2:  # the epoch argument: die before epoch 3, after 2 checkpoints
                raise Crash()
            return real(*a, **k)

        fit_module._run_epoch = crashing
        try:
            fit(_model(data, 100 + rank), data, TrainConfig(**CFG), checkpoint_dir=f"{out}/B",
                progress=False)
            raise AssertionError("the simulated crash did not happen")
        except Crash:
            pass
        fit_module._run_epoch = real
        res = fit(_model(data, 555 + rank), data, TrainConfig(**CFG), checkpoint_dir=f"{out}/B",
                  progress=False)
        save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
                  f"{out}/B-rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_shards_are_disjoint_equal_and_cover_the_usable_batch():
    idx = torch.randperm(67, generator=torch.Generator().manual_seed(0))
    parts = [ddp.shard(idx, ddp.World(r, 3)) for r in range(3)]
    assert {len(p) for p in parts} == {22}
    got = torch.cat(parts).sort().values
    assert torch.equal(got, idx[:66].sort().values)


def test_trailing_batch_is_dropped_when_a_rank_would_get_one_sample():
    assert ddp.batch_starts(130, 64, 2, None) == [0, 64]  # last batch: 2 samples -> 1 per rank
    assert ddp.batch_starts(132, 64, 2, None) == [0, 64, 128]
    assert ddp.batch_starts(129, 64, 1, None) == [0, 64]  # one process: the old 1-sample rule


@pytest.mark.dist
def test_two_process_fit_trains_identically_checkpoints_on_rank0_and_resumes(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (load_file(str(tmp_path / f"S-rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(s0[k], s1[k]) for k in s0) and s1["weight"].abs().sum() == 0
    assert s1["mask"].tolist() == [True, False, False, True]
    a0, a1 = (load_file(str(tmp_path / f"A-rank{r}.safetensors")) for r in (0, 1))
    b0, b1 = (load_file(str(tmp_path / f"B-rank{r}.safetensors")) for r in (0, 1))
    for k in a0:
        assert torch.equal(a0[k], a1[k]), f"ranks differ in {k}"
        assert torch.equal(b0[k], b1[k]), f"ranks differ in {k} after resume"
        assert torch.equal(a0[k], b0[k]), f"crash + resume differs from the uninterrupted run in {k}"
    g0, g1 = (load_file(str(tmp_path / f"G-rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(g0[k], g1[k]) for k in g0), "two-group objective: ranks differ"
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    assert hist[-1]["test_acc"] > 0.8  # chance is 0.1
    assert hist[-1]["processes"] == 2
    for d in ("A", "B"):
        meta = json.loads((tmp_path / d / "state.json").read_text())
        assert meta["epoch"] == 3
        assert (tmp_path / d / "model.safetensors").is_file()

    # global batch semantics: 2 ranks x 32 samples ~ 1 process x 64 (same start, same batches)
    data = _data()
    one = fit(_model(data, 100), data, TrainConfig(**{**CFG, "epochs": 3}), progress=False)
    for k, v in one.model.state_dict().items():
        assert torch.allclose(v, a0[k], atol=1e-4, rtol=1e-3), k
    for k, v in _two_group_fit(data, 100).state_dict().items():  # per-group gradients averaged
        assert torch.allclose(v, g0[k], atol=1e-4, rtol=1e-3), k


def test_scale_info_prints_the_launch_lines_and_the_context(capsys):
    from robustcompress.cli import main

    assert main(["scale-info", "--nproc", "3", "--config", "demo.yaml", "--dataset", "digits",
                 "--model", "lenet5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "torchrun --nproc_per_node 3 -m robustcompress.cli run demo.yaml --device cpu" in out
    assert "torchrun --nproc_per_node 3 -m robustcompress.cli train --dataset digits --model lenet5" in out
    assert "gloo available" in out and "not initialised" in out


def test_scale_info_refuses_more_gpu_processes_than_gpus(capsys):
    from robustcompress.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; the no-GPU error path cannot be exercised")
    assert main(["scale-info", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.dist
@pytest.mark.slow
def test_train_cli_under_torchrun_is_data_parallel_and_rank0_only_prints(tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robustcompress.cli", "train", "--dataset", "digits", "--model",
           "lenet300", "--epochs", "2", "--batch-size", "64", "--train-limit", "400",
           "--test-limit", "200", "--out", str(run), "--no-progress", "--device", "cpu"]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stdout.count("robustcompress train") == 1  # one summary table: rank 0's
    meta = json.loads((run / "model.json").read_text())
    assert meta["metrics"]["test_acc"] > 0.7 and meta["metrics"]["processes"] == 2


@pytest.mark.dist
@pytest.mark.slow
def test_experiment_with_data_parallel_training_under_torchrun(tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    out = tmp_path / "exp"
    cfg = {"name": "ddp", "seed": 1, "output_dir": str(out),
           "dataset": {"name": "digits", "train_limit": 400, "test_limit": 100},
           "model": {"name": "lenet300"},
           "training": {"epochs": 2, "batch_size": 64, "lr": 0.003, "data_parallel": True},
           "evaluation": {"n_samples": 40, "batch_size": 20, "threats": [{"norm": "linf", "eps": [0.1]}],
                          "paper": [{"attack": "fgsm"}], "adaptive": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robustcompress.cli", "run", str(tmp_path / "c.yaml"),
           "--no-progress", "--device", "cpu"]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    states = list((out / "train").glob("base-*/state.json"))
    assert len(states) == 1
    hist = json.loads(states[0].read_text())["history"]
    assert [h["processes"] for h in hist] == [2, 2] and hist[-1]["test_acc"] > 0.6
