"""Shared fixtures. Tests read real data from ../shared/data (or $ROBUSTCOMPRESS_DATA)."""

import os
from pathlib import Path

import pytest

# Without a GPU, Triton's interpreter runs the CUDA SAP sampler's kernels on CPU tensors
# (tests/test_sap_operator.py). It must be chosen before triton is first imported, and never
# where an NVIDIA driver is present (there the kernels, and torch.compile's, run for real).
if not Path("/proc/driver/nvidia").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# Two xdist workers share two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    env = os.environ.get("ROBUSTCOMPRESS_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not root.exists():
        pytest.skip(f"shared data not found at {root}")
    return root


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def digits():
    """The embedded digits dataset (one load per test module)."""
    from robustcompress.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """LeNet-300-100 trained 3 epochs on digits (seed 0), in eval mode; one per test module."""
    from robustcompress.models import build_model
    from robustcompress.training import TrainConfig, fit

    torch.manual_seed(0)
    m = build_model("lenet300", digits.info)
    fit(m, digits, TrainConfig(epochs=3), progress=False)
    return m.eval()


@pytest.fixture(scope="module")
def digits_mlp(digits):
    """A 64-64-10 ReLU MLP trained on the digits (150 full-batch Adam steps, ~97% test accuracy),
    frozen and in eval mode: the deterministic model the canary, convergence and paper-protocol
    tests defend or disguise."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(digits.train.x), digits.train.y).backward()
        opt.step()
    net.requires_grad_(False)
    return net.eval()
