"""Feedback learning (Song et al.): tiers, boundary-crossing examples with true labels, retraining."""

import copy

import torch

from robustcompress.defenses.feedback_learning import (boundary_perturbations, class_tiers,
                                                       feedback_learning,
                                                       generate_boundary_examples)
from robustcompress.training import TrainConfig, fit


# `digits` and `trained` (LeNet-300-100, 3 epochs on digits) come from tests/conftest.py


def test_class_tiers_20_50_split():
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 0.5, 6.0, 4.0])
    tiers = class_tiers(scores)
    assert [i for i, t in enumerate(tiers) if t == "high"] == [2, 6]
    assert sorted(i for i, t in enumerate(tiers) if t == "low") == [1, 3, 5, 7, 9]
    assert sorted(i for i, t in enumerate(tiers) if t == "medium") == [0, 4, 8]


def test_generated_examples_cross_the_boundary_and_keep_true_labels(trained, digits, gen):
    x, y = digits.train.x[:600], digits.train.y[:600]
    new = generate_boundary_examples(trained, x, y, 10, per_tier=(2, 4, 6), generator=gen)
    counts = torch.bincount(new["y"], minlength=10)
    want = {"high": 2, "medium": 4, "low": 6}
    for c, t in enumerate(new["tiers"]):
        assert counts[c] == want[t]
    with torch.no_grad():
        pred = trained(new["x"]).argmax(1)
    assert float((pred != new["y"]).float().mean()) > 0.8  # beyond the boundary, true labels
    # low tier = smallest mean boundary distance
    s = new["class_scores"]
    low = [c for c, t in enumerate(new["tiers"]) if t == "low"]
    high = [c for c, t in enumerate(new["tiers"]) if t == "high"]
    assert s[low].max() <= s[high].min()
    assert new["x"].min() >= 0 and new["x"].max() <= 1


def test_feedback_learning_enlarges_boundary_distance_vs_plain_retraining(trained, digits):
    g = torch.Generator().manual_seed(0)
    fl, hist = feedback_learning(trained, digits, rounds=2, epochs=1, pool=800, generator=g,
                                 train_config=TrainConfig(seed=1))
    plain = copy.deepcopy(trained)
    fit(plain, digits, TrainConfig(epochs=2, seed=1), progress=False)
    assert len(hist) == 2 and hist[0]["generated"] > 400
    x, y = digits.test.x, digits.test.y
    d_fl = boundary_perturbations(fl.eval(), x, y)[0].flatten(1).norm(dim=1).mean()
    d_plain = boundary_perturbations(plain.eval(), x, y)[0].flatten(1).norm(dim=1).mean()
    assert d_fl > d_plain
    assert fl.robustcompress_defenses[-1]["name"] == "feedback_learning"
