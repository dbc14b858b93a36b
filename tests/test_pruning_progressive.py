"""Progressive pruning (Guo et al.): schedule, fixed masks through fit, resume, defense spec, L1."""

import pytest
import torch

from robustcompress.defenses import get_defense
from robustcompress.errors import UserInputError
from robustcompress.defenses.base import DefenseContext
from robustcompress.defenses.pruning import L1Activation, progressive_prune
from robustcompress.metrics.sparsity import activation_sparsity, weight_sparsity
from robustcompress.models import build_model
from robustcompress.nn.masks import get_masks
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint


# `digits` and `trained` (LeNet-300-100, 3 epochs on digits) come from tests/conftest.py


def test_progressive_schedule_fixed_masks_and_dense_copy(digits, trained, tmp_path):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    rounds = progressive_prune(trained, digits, 1 / 3, 4, 1, train_config=TrainConfig(epochs=1),
                               checkpoint_dir=tmp_path)
    assert len(rounds) == 5 and rounds[0][0] == 0.0
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # untouched
    for k, (sp, m) in enumerate(rounds[1:], start=1):
        assert sp == pytest.approx(1 - (2 / 3) ** k, abs=0.003)
        masks = get_masks(m)
        for name, mask in masks.items():
            w = m.get_submodule(name).weight
            assert torch.all(w[~mask] == 0)  # retraining did not revive pruned weights
            if k > 1:
                prev = get_masks(rounds[k - 1][1])[name]
                assert not torch.any(mask & ~prev)  # pruned weights never come back
        assert m.robustcompress_defenses[-1]["params"]["rounds"] == k
    # retraining actually changed the kept weights
    w1 = rounds[1][1].fc2.weight
    kept = get_masks(rounds[1][1])["fc2"]
    assert not torch.allclose(w1[kept], trained.fc2.weight[kept])


def test_progressive_resumes_from_round_checkpoints(digits, trained, tmp_path, monkeypatch):
    first = progressive_prune(trained, digits, 0.5, 2, 1, train_config=TrainConfig(epochs=1),
                              checkpoint_dir=tmp_path)
    import robustcompress.training as tr

    def boom(*a, **k):
        raise AssertionError("finished rounds must not be retrained")

    monkeypatch.setattr(tr, "fit", boom)
    again = progressive_prune(trained, digits, 0.5, 2, 1, checkpoint_dir=tmp_path)
    with pytest.raises(UserInputError):  # other settings never silently reuse stale rounds
        progressive_prune(trained, digits, 0.3, 2, 1, checkpoint_dir=tmp_path)
    for (s1, m1), (s2, m2) in zip(first, again):
        assert s1 == s2
        assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(),
                                                     m2.state_dict().values()))


def test_prune_defense_variants_and_checkpoint_rebuild(digits, trained, tmp_path):
    spec = get_defense("prune")
    params = spec.Params(rho=0.5, rounds=2, retrain_epochs=0, keep_first_last=True)
    ctx = DefenseContext(dataset=digits, device=torch.device("cpu"), progress=False)
    out = spec.apply(trained, params, ctx)
    assert list(out) == ["r1", "r2"]
    sp = weight_sparsity(out["r2"])
    assert sp["fc1"] == 0 and sp["fc3"] == 0 and sp["fc2"] == pytest.approx(0.75)
    save_checkpoint(out["r2"], tmp_path / "m")
    back = load_checkpoint(tmp_path / "m")
    x = digits.test.x[:20]
    assert torch.equal(back(x), out["r2"].eval()(x))
    assert torch.equal(get_masks(back)["fc2"], get_masks(out["r2"])["fc2"])


def test_l1_activation_objective_increases_activation_sparsity(digits):
    res = {}
    for lam in (0.0, 0.5):
        torch.manual_seed(0)
        m = build_model("lenet300", digits.info)
        fit(m, digits, TrainConfig(epochs=3), objective=L1Activation(lam), progress=False)
        m.eval()
        res[lam] = activation_sparsity(m, digits.test.x)["relu_fc2"]
    assert res[0.5]["zero_frac"] > res[0.0]["zero_frac"] + 0.1
    assert res[0.5]["l1_per_dim"] < res[0.0]["l1_per_dim"]
