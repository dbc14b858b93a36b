"""The verdict of a deterministic model is its logits' argmax, even where softmax rounds to a tie."""

import torch
from torch import nn

from robustcompress.attacks import ThreatModel, judge, run_attack
from robustcompress.attacks.base import prediction


def near_tie_model(gap: float = 1e-9) -> nn.Module:
    """Logits ``[0, gap]`` for every input: class 1 by argmax, equal probabilities after softmax."""
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.0, gap]))
    return nn.Sequential(nn.Flatten(), lin)


def test_deterministic_verdict_is_the_logits_argmax_at_a_1e9_gap():
    model = near_tie_model()
    x = torch.rand(6, 1, 4, generator=torch.Generator().manual_seed(0))
    logits = model(x)
    probs = logits.softmax(dim=1)
    assert (logits[:, 1] - logits[:, 0] > 0).all()
    assert torch.equal(probs[:, 0], probs[:, 1])  # the tie the softmax verdict fell into
    truth = logits.argmax(dim=1)
    assert (truth == 1).all()
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    for y, fooled in ((torch.ones(6, dtype=torch.long), False), (torch.zeros(6, dtype=torch.long), True)):
        success, fooled_any, pred = judge(model, x, y, threat)
        assert torch.equal(pred, truth)
        assert (success == fooled).all() and (fooled_any == fooled).all()
        # through an attack's own finish (no reusable logits): the same verdict
        res = run_attack("uniform", model, x, y, threat, generator=torch.Generator().manual_seed(1))
        assert torch.equal(res.pred, model(res.x_adv).argmax(dim=1))
        assert (res.success == fooled).all()


def test_several_draws_keep_the_mc_averaged_softmax():
    # one draw says class 1 with a huge logit, three say class 0 mildly: the mean logits pick
    # class 1, the mean softmax (the MC-averaged prediction) picks class 0.
    draws = torch.tensor([[[0.0, 100.0]], [[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]])
    assert int(draws.mean(0).argmax(dim=1)) == 1
    assert int(prediction(draws)) == 0 == int(draws.softmax(dim=2).mean(0).argmax(dim=1))
    assert int(prediction(draws[:1])) == 1
