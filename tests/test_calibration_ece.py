"""Reliability diagram data, ECE and the reliability plot."""

import pytest
import torch

from robustcompress.errors import UserInputError
from robustcompress.metrics.calibration import expected_calibration_error, plot_reliability, reliability


def _probs_with_confidence(conf: torch.Tensor, pred: torch.Tensor, classes: int = 4) -> torch.Tensor:
    """Probabilities whose max is ``conf`` at class ``pred`` (rest spread evenly)."""
    conf = conf.double()
    p = ((1 - conf) / (classes - 1)).unsqueeze(1).repeat(1, classes)
    p[torch.arange(len(conf)), pred] = conf
    return p


def test_perfectly_calibrated_predictor_has_ece_near_zero(gen):
    n = 50000
    conf = 0.3 + 0.7 * torch.rand(n, generator=gen)
    pred = torch.zeros(n, dtype=torch.long)
    correct = torch.rand(n, generator=gen) < conf
    labels = torch.where(correct, pred, torch.ones_like(pred))
    ece = expected_calibration_error(_probs_with_confidence(conf, pred), labels)
    assert ece < 0.01


def test_overconfident_hand_made_example_has_the_exact_ece():
    # 10 predictions at confidence 0.9 of which 6 correct -> |0.6 - 0.9| = 0.3 on all of them;
    # 10 at confidence 0.55 (bin (0.533, 0.6]) of which 5 correct -> |0.5 - 0.55| = 0.05.
    conf = torch.tensor([0.9] * 10 + [0.55] * 10, dtype=torch.float64)
    pred = torch.zeros(20, dtype=torch.long)
    labels = torch.tensor([0] * 6 + [1] * 4 + [0] * 5 + [2] * 5)
    data = reliability(_probs_with_confidence(conf, pred), labels, n_bins=15)
    assert data.ece == pytest.approx(0.5 * 0.3 + 0.5 * 0.05, abs=1e-9)
    assert int(data.count.sum()) == 20 and int((data.count > 0).sum()) == 2
    b = int(torch.nonzero(data.count == 10)[-1])
    assert data.accuracy[b].item() == pytest.approx(0.6) and data.confidence[b].item() == pytest.approx(0.9)
    assert torch.isnan(data.accuracy[0])  # empty bins are NaN, not 0
    assert reliability(_probs_with_confidence(conf, pred), labels, n_bins=1).ece == pytest.approx(
        abs(11 / 20 - (9 + 5.5) / 20))


def test_bin_edges_are_right_closed():
    conf = torch.tensor([0.6, 0.6000001], dtype=torch.float64)
    data = reliability(_probs_with_confidence(conf, torch.zeros(2, dtype=torch.long)),
                       torch.zeros(2, dtype=torch.long), n_bins=5)
    assert data.count.tolist() == [0, 0, 1, 1, 0]


def test_bad_inputs_and_plot(tmp_path):
    with pytest.raises(UserInputError):
        reliability(torch.rand(3, 2) * 5, torch.zeros(3, dtype=torch.long))
    with pytest.raises(UserInputError):
        reliability(torch.rand(3, 2), torch.zeros(4, dtype=torch.long))
    p = torch.softmax(torch.randn(100, 3), 1)
    y = torch.randint(0, 3, (100,))
    path = plot_reliability({"dense": reliability(p, y), "SAP": reliability(p.sqrt() / p.sqrt().sum(1, keepdim=True), y)},
                            tmp_path / "rel.png")
    assert path.stat().st_size > 1000
