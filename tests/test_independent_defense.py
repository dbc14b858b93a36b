"""The black-box surrogate (`method: independent`) differs from the base for every run seed."""

import pytest
import torch

from robustcompress.data.info import DatasetInfo
from robustcompress.defenses import DefenseContext, get_defense
from robustcompress.errors import UserInputError
from robustcompress.models import build_model

DIGITS = DatasetInfo("digits", (1, 8, 8), 10, tuple("0123456789"), mean=(0.3,), std=(0.4,))


class _Data:
    info = DIGITS


def _apply(run_seed: int, offset: int):
    calls = []

    def fit(model, **overrides):
        calls.append((model, overrides))
        return model

    spec = get_defense("independent")
    torch.manual_seed(run_seed)  # the runner builds the base like this
    base = build_model("lenet5", DIGITS)
    ctx = DefenseContext(dataset=_Data(), device=torch.device("cpu"), seed=run_seed, fit=fit)
    spec.apply(base, spec.Params(seed=offset, epochs=2), ctx)
    return base, calls[0]


@pytest.mark.parametrize("run_seed", [0, 1, 5])
def test_surrogate_seed_is_an_offset_from_the_run_seed(run_seed):
    base, (surrogate, overrides) = _apply(run_seed, 1)
    assert overrides == {"seed": run_seed + 1, "epochs": 2}  # `run --seed 1` no longer retrains the base
    torch.manual_seed(run_seed + 1)
    expected = build_model("lenet5", DIGITS)
    assert torch.equal(surrogate.conv1.weight, expected.conv1.weight)
    assert not torch.equal(surrogate.conv1.weight, base.conv1.weight)


def test_offset_zero_is_refused():
    with pytest.raises(UserInputError, match="offset"):
        _apply(1, 0)
