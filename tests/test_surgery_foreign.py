"""Every defense on foreign architectures (replicas of torchvision/timm layouts in
``tests/replicas.py``): the sites found equal the hand count, identity settings reproduce the
undefended output, and what a method cannot cover is refused or reported by name."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from replicas import COUNTS, mobilenet_v2, resnet18, small_functional_net, untraceable_net, vit
from robustcompress.defenses.anp_vs import place_masks
from robustcompress.defenses.pruning import L1Activation, prune
from robustcompress.defenses.quantization import quantize
from robustcompress.defenses.sap import sap
from robustcompress.defenses.stochastic_baselines import activation_noise, dropout_after_relu
from robustcompress.defenses.tensorization import tensorize, tensorize_plan
from robustcompress.nn import surgery
from robustcompress.nn.act_quant import ActQuant, replace_relus
from robustcompress.nn.beta_bernoulli import bb_masks
from robustcompress.nn.noise import TestTimeDropout
from robustcompress.nn.sap import SAP

X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _small(name):
    torch.manual_seed(0)
    return {"resnet18": lambda: resnet18(width=8), "resnet18_f": lambda: resnet18(width=8, functional_stem=True),
            "mobilenet_v2": mobilenet_v2, "vit": vit, "small_functional_net": small_functional_net,
            "untraceable_net": untraceable_net}[name]().eval()


def _calls(model: nn.Module, cls) -> int:
    """How many times modules of ``cls`` run in one forward on X."""
    n = [0]
    hooks = [m.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
             for m in model.modules() if isinstance(m, cls)]
    with torch.no_grad():
        model(X)
    for h in hooks:
        h.remove()
    return n[0]


@pytest.mark.parametrize("name,key", [("resnet18", "resnet18"), ("resnet18_f", "resnet18"),
                                      ("mobilenet_v2", "mobilenet_v2"), ("vit", "vit"),
                                      ("small_functional_net", "small_functional_net")])
def test_activation_sites_match_hand_count(name, key):
    report = surgery.find_sites(_small(name))
    assert report.traced
    assert len(report.sites) == COUNTS[key]["activation_calls"]
    kinds = {}
    for s in report.sites:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    assert kinds == COUNTS[key]["activation_by_kind"]
    functional = sum(s.how != "module" for s in report.sites)
    assert functional == (1 if name == "resnet18_f" else COUNTS[key]["functional_activations"])


def test_untraceable_model_sites_by_running_it():
    model = _small("untraceable_net")
    with pytest.raises(surgery.SiteError, match="does not trace.*example="):
        surgery.find_sites(model)
    report = surgery.find_sites(model, example=X)
    assert not report.traced and len(report.sites) == COUNTS["untraceable_net"]["activation_calls"]
    defended = sap(model, example=X)  # distinct modules: rewritten in the module tree
    assert _calls(defended, SAP) == 2


def test_untraceable_model_with_functional_relu_is_refused_by_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            h = self.relu(self.conv(x))
            if h.mean() > 100:  # data-dependent: fx cannot trace
                h = h / 2
            return self.fc(torch.relu(h).mean((2, 3)))

    with pytest.raises(surgery.SiteError, match=r"<root>:F\.relu"):
        sap(Net(), example=X)


@pytest.mark.parametrize("name,selector,expected", [
    ("resnet18", "relu", 17), ("resnet18_f", "relu", 17), ("mobilenet_v2", "relu", 11),
    ("vit", "activations", 2), ("small_functional_net", "activations", 7),
    ("small_functional_net", "relu", 4)])
def test_sap_and_baselines_cover_every_site(name, selector, expected):
    model = _small(name)
    defended = sap(model, layers=selector, method="bernoulli")
    assert _calls(defended, SAP) == expected
    assert sum(isinstance(m, SAP) for m in defended.modules()) == expected  # one module per call
    # identity settings: dropout with rate 0 and noise with s = 0 leave the output unchanged
    for ident in (dropout_after_relu(model, 0.0, layers=selector),
                  activation_noise(model, 0.0, layers=selector)):
        with torch.no_grad():
            torch.testing.assert_close(ident(X), model(X), rtol=0, atol=0)
    assert _calls(dropout_after_relu(model, 0.0, layers=selector), TestTimeDropout) == expected
    assert defended.robustcompress_defenses[-1]["name"] == "sap"
    assert copy.deepcopy(defended).robustcompress_defenses == defended.robustcompress_defenses


def test_sap_refuses_a_model_without_the_selected_kind():
    with pytest.raises(surgery.SiteError, match="no 'relu' activation.*gelu"):
        sap(_small("vit"))


def test_insert_after_leaves_the_base_model_untouched():
    model = _small("resnet18_f")
    before = copy.deepcopy(model.state_dict())
    out = sap(model)
    assert isinstance(out, surgery.RewrittenModel) and not any(isinstance(m, SAP) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(out.state_dict()) == set(before)  # SAP adds no state


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit"])
def test_tensorize_converts_or_reports_every_layer(name):
    model = _small(name)
    c = COUNTS[name]
    convert, dense = tensorize_plan(model)
    assert len(convert) + len(dense) == c["convs"] + c["linears"]
    grouped = [n for n, r in dense.items() if r.startswith("grouped/depthwise conv")]
    assert len(grouped) == c["grouped_convs"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = tensorize(model, rank=1.0, theta=1.0).eval()
    assert bool(grouped) == any("grouped/depthwise conv" in str(x.message) for x in w)
    with torch.no_grad():  # full rank, no sketch: the dense function
        torch.testing.assert_close(t(X), model(X), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit"])
def test_pruning_and_quantization_cover_every_conv_and_linear(name):
    model = _small(name)
    n_layers = COUNTS[name]["convs"] + COUNTS[name]["linears"]
    pruned = prune(model, 0.0)
    assert sum(hasattr(m, "parametrizations") for m in pruned.modules()
               if isinstance(m, surgery.LAYER_TYPES)) == n_layers
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), model(X), rtol=0, atol=0)
    q = quantize(model, 8, per_channel=True)
    assert sum(getattr(m, "weight_bits", None) == 8 for m in q.modules()) == n_layers
    with torch.no_grad():
        ref = model(X)
        assert (q(X) - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


@pytest.mark.parametrize("name,masks", [("resnet18", 20), ("mobilenet_v2", 16), ("vit", 9)])
def test_anp_masks_need_no_data_and_skip_only_the_classifier(name, masks):
    model = _small(name)
    masked = place_masks(model)
    assert len(list(bb_masks(masked))) == masks  # convs + linears - the classifier
    head = "head" if name == "vit" else ("fc" if name == "resnet18" else "classifier.1")
    assert isinstance(masked.get_submodule(head), nn.Linear)
    assert masked(X).shape == (2, 10)


def test_defensive_quantization_sites():
    q = replace_relus(_small("resnet18_f"), bits=4)
    assert _calls(q, ActQuant) == 17 and sum(isinstance(m, ActQuant) for m in q.modules()) == 17
    with pytest.raises(surgery.SiteError, match="not ReLUs.*relu6"):
        replace_relus(_small("mobilenet_v2"), bits=4)


def test_l1_activation_sees_functional_and_reused_relus():
    model = _small("resnet18_f").train()
    with surgery.tap_activations(model) as tap:
        model(X)
    assert len(tap.outputs("relu")) == 17
    loss0 = L1Activation(0.0)(model, X, torch.zeros(2, dtype=torch.long))
    loss1 = L1Activation(1.0)(model, X, torch.zeros(2, dtype=torch.long))
    expected = sum(a.flatten(1).abs().mean(1).mean() for a in tap.outputs("relu"))
    torch.testing.assert_close(loss1 - loss0, expected, rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_equals_eval_model():
    model = _small("resnet18")
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    pairs = surgery.conv_bn_pairs(surgery.trace(model))
    assert len(pairs) == COUNTS["resnet18"]["conv_bn_pairs"]
    folded = surgery.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(X), model(X), rtol=1e-4, atol=1e-5)


def test_adaptive_evaluation_runs_on_a_defended_foreign_model():
    from robustcompress.attacks import ThreatModel, evaluate_robustness

    model = sap(_small("resnet18_f"), method="bernoulli")
    y = model(X).argmax(1).detach()  # labels the model gets right most of the time
    rep = evaluate_robustness(model, X, y, ThreatModel.from_spec("linf", 8 / 255), eot_samples=2,
                              mc_samples=2, apgd_steps=3, square_queries=20, checks=False,
                              generator=torch.Generator().manual_seed(0), progress=False)
    assert rep.n == 2 and rep.settings["eot_samples"] == 2  # randomness seen: EOT used
    assert 0.0 <= rep.robust_accuracy <= rep.clean_accuracy <= 1.0


def test_coverage_report_and_inspect_cli(tmp_path, capsys):
    from robustcompress.cli import main
    from robustcompress.data.info import DatasetInfo
    from robustcompress.defenses.base import coverage_report
    from robustcompress.models import build_foreign
    from robustcompress.training import save_checkpoint

    info = DatasetInfo("cifar10", (3, 32, 32), 10, tuple(map(str, range(10))),
                       mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    factory = f"{__file__.rsplit('/', 1)[0]}/replicas.py:resnet18"
    model = build_foreign(factory, info, kwargs={"width": 8, "functional_stem": True},
                          bounds=(0.0, 1.0), mean=info.mean, std=info.std)
    cov = {c.method: c for c in coverage_report(model)}
    assert len(cov["sap"].sites) == 17 and sum(":F.relu" in s for s in cov["sap"].sites) == 1
    assert len(cov["tensorization"].sites) + len(cov["tensorization"].left) == 21
    assert len(cov["prune"].sites) == 21 and len(cov["anp_vs"].sites) == 20
    assert not any(c.error for c in cov.values())
    save_checkpoint(model, tmp_path / "mine")
    assert main(["defenses", "inspect", "--checkpoint", str(tmp_path / "mine"), "--method", "sap",
                 "--sites"]) == 0
    out = capsys.readouterr().out
    assert "sap: activation applications (relu): covers 17" in out and "layer1.0.relu#2" in out
    assert main(["defenses", "inspect", "--checkpoint", str(tmp_path / "mine"), "--method", "nope"]) == 2


def test_attacks_refuse_a_threat_whose_box_is_not_the_models_declared_one():
    from robustcompress.attacks import ThreatModel, evaluate_robustness, run_attack
    from robustcompress.errors import ThreatModelError
    from robustcompress.models import with_normalization

    model = with_normalization(_small("resnet18"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.0, 1.0))
    y = torch.zeros(2, dtype=torch.long)
    audio_box = ThreatModel("linf", 0.1, bounds=(-1.0, 1.0))
    with pytest.raises(ThreatModelError, match=r"declares inputs in \[0.0, 1.0\]"):
        run_attack("fgsm", model, X, y, audio_box)
    with pytest.raises(ThreatModelError, match="declares inputs"):
        evaluate_robustness(model, X, y, audio_box, progress=False)
    assert run_attack("fgsm", model, X, y, ThreatModel("linf", 0.1)).x_adv.shape == X.shape


def test_input_and_training_defenses_run_on_a_foreign_model():
    from robustcompress.data.info import Dataset, DatasetInfo, Split
    from robustcompress.defenses.adversarial_training import adversarial_training
    from robustcompress.defenses.feature_squeezing import feature_squeezing
    from robustcompress.models import build_foreign
    from robustcompress.training import TrainConfig

    info = DatasetInfo("cifar10", (3, 32, 32), 10, tuple(map(str, range(10))))
    factory = f"{__file__.rsplit('/', 1)[0]}/replicas.py:mobilenet_v2"
    model = build_foreign(factory, info, bounds=(0.0, 1.0), mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    fs = feature_squeezing(model, info, bits=5, median=2)
    assert fs(X).shape == (2, 10)
    g = torch.Generator().manual_seed(0)
    data = Dataset(info, Split(torch.rand(16, 3, 32, 32, generator=g), torch.arange(16) % 10),
                   Split(X, torch.zeros(2, dtype=torch.long)))
    at = adversarial_training(model, data, eps=8 / 255, steps=1,
                              config=TrainConfig(epochs=1, batch_size=8))
    changed = any(not torch.equal(a, b) for a, b in zip(at.state_dict().values(),
                                                       model.state_dict().values()))
    assert changed and at(X).shape == (2, 10)
