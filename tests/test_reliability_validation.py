"""Issue 13, parts 4-5: every invalid config or attack call ends in one clear UserInputError
naming the problem and the fix, up front (before training, before attacking)."""

import warnings

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel, evaluate_robustness, run_attack
from robustcompress.errors import ConfigError, UserInputError
from robustcompress.experiments import load_config
from robustcompress.experiments.config import ExperimentConfig

BASE = """\
name: t
dataset: {name: digits}
model: {name: lenet5}
training: {epochs: 1}
defenses:
%(defenses)s
evaluation:
  n_samples: 20
  threats:
%(threats)s
  paper:
%(paper)s
"""
DEFENSES = "  - {name: sap, method: sap}"
THREATS = "    - {norm: linf, eps: [0.1]}"
PAPER = "    - {attack: fgsm}"


def config(tmp_path, *, defenses=DEFENSES, threats=THREATS, paper=PAPER, text=None):
    p = tmp_path / "c.yaml"
    p.write_text(text if text is not None else BASE % dict(defenses=defenses, threats=threats, paper=paper))
    return p


def test_base_config_is_valid(tmp_path):
    load_config(config(tmp_path))


# ------------------------------------------------------------------------ part 4: config check
@pytest.mark.parametrize("item, match", [
    ("{attack: pgd, stepz: 20}", r"paper\[0\].stepz.*no parameter.*stepz.*accepts"),
    ("{attack: pgd, steps: 0}", r"paper\[0\].steps.*whole number >= 1, got 0"),
    ("{attack: bim, steps: -3}", r"steps must be a whole number >= 1, got -3"),
    ("{attack: pgd, step_size: 0}", r"step_size must be a number > 0"),
    ("{attack: mim, step_size: -0.1}", r"step_size must be a number > 0"),
    ("{attack: pgd, restarts: 0}", r"restarts must be a whole number >= 1"),
    ("{attack: pgd, steps: abc}", r"steps must be a whole number >= 1, got 'abc'; give a number"),
    ("{attack: pgd, step_size: 2/255}", r"step_size must be a number > 0, got '2/255'"),
    ("{attack: pgd, random_start: maybe}", r"random_start must be true or false"),
    ("{attack: pgd, loss: dlrr}", r"loss must be one of ce, dlr, cw"),
    ("{attack: cw, steps: 0, norm: l2}", r"steps must be a whole number >= 1"),
    ("{attack: square, n_queries: 0}", r"n_queries must be a whole number >= 1"),
    ("{attack: deepfool, boundary_search: -1, norm: l2}", r"boundary_search must be a whole number >= 0"),
    ("{attack: fgsm, eot_samples: 5}", r"eot_samples.*`eot:` on the attack item"),
    ("{attack: transfer, surrogate: base, craft: pgd, craft_params: {steps: 0}}",
     r"craft_params.*steps must be a whole number >= 1"),
])
def test_paper_attack_parameters_are_checked_with_their_line(tmp_path, item, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(config(tmp_path, paper=f"    - {item}"))
    assert "c.yaml (line 12): evaluation.paper[0]" in str(e.value)


@pytest.mark.parametrize("kind, defenses, threats, match", [
    ("l2 threat over the box diameter", DEFENSES, "    - {norm: l2, eps: [100]}",
     r"threats\[0\].eps\[0\].*L2 diameter 8"),
    ("adversarial_training eps in 0-255 units", "  - {name: at, method: adversarial_training, params: {eps: 8}}",
     THREATS, r"defenses\[0\].params.eps: .*eps"),
    ("adversarial_training eps in a grid", "  - {name: at, method: adversarial_training, grid: {eps: [0.1, 3]}}",
     THREATS, r"defenses\[0\].grid.eps\[1\]"),
    ("adversarial_training l2 eps over the diameter",
     "  - {name: at, method: adversarial_training, params: {eps: 50, norm: l2}}", THREATS,
     r"defenses\[0\].params.eps: .*L2 diameter"),
    ("anp_vs eps", "  - {name: anp, method: anp_vs, params: {eps: 5}}", THREATS, r"defenses\[0\].params.eps"),
    ("tensorization adversarial_eps", "  - {name: tn, method: tensorization, params: {adversarial: true, "
     "adversarial_eps: 16}}", THREATS, r"defenses\[0\].params.adversarial_eps"),
    ("eps that is not a number", "  - {name: at, method: adversarial_training, params: {eps: big}}",
     THREATS, r"defenses\[0\].params.eps"),
])
def test_every_eps_is_checked_against_the_dataset_box(tmp_path, kind, defenses, threats, match):
    with pytest.raises(ConfigError, match=match):
        load_config(config(tmp_path, defenses=defenses, threats=threats))


def test_l2_eps_inside_the_diameter_and_a_valid_defense_eps_pass(tmp_path):
    load_config(config(tmp_path, threats="    - {norm: l2, eps: [2.0]}",
                       defenses="  - {name: at, method: adversarial_training, params: {eps: 8, eps_scale: 255}}"))


@pytest.mark.parametrize("defenses, cycle", [
    ("  - {name: a, method: sap, base: a}", "a -> a"),
    ("  - {name: a, method: sap, base: b}\n  - {name: b, method: sap, base: a}", "a -> b -> a"),
    ("  - {name: x, method: sap, base: a}\n  - {name: a, method: sap, base: c}\n"
     "  - {name: b, method: sap, base: a}\n  - {name: c, method: sap, base: b}", "a -> c -> b -> a"),
], ids=["self", "pair", "entered-from-outside"])
def test_defense_cycles_are_refused_naming_the_cycle(tmp_path, defenses, cycle):
    with pytest.raises(ConfigError, match="cycle " + cycle.replace(" ", r"\s")) as e:
        load_config(config(tmp_path, defenses=defenses))
    assert str(e.value).count("\n  ") == 1  # one problem: reported once, not once per member


@pytest.mark.parametrize("values, keys", [(100, 4), (10, 6), (1000, 2)])
def test_huge_grids_are_refused_by_count_without_expanding(tmp_path, values, keys):
    grid = ", ".join(f"k{i}: [{', '.join(str(v) for v in range(values))}]" for i in range(keys))
    with pytest.raises(ConfigError, match=f"{values ** keys:,} variants"):
        load_config(config(tmp_path, defenses=f"  - {{name: s, method: sap, grid: {{{grid}}}}}"))


def test_an_empty_grid_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"grid.frac: an empty list"):
        load_config(config(tmp_path, defenses="  - {name: s, method: sap, grid: {frac: []}}"))


@pytest.mark.parametrize("text, key, lines", [
    ("name: a\nseed: 1\nseed: 2\ndataset: {name: digits}\n", "seed", (2, 3)),
    ("name: a\ndataset:\n  name: digits\n  name: mnist\n", "name", (3, 4)),
    ("name: a\ndataset: {name: digits}\nevaluation:\n  paper: [{attack: pgd, steps: 10, steps: 20}]\n",
     "steps", (4, 4)),
])
def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path, text, key, lines):
    first = "earlier on the same line" if lines[0] == lines[1] else f"first at line {lines[0]}"
    with pytest.raises(ConfigError, match=rf"line {lines[1]}\): duplicate key '{key}' \({first}\)"):
        load_config(config(tmp_path, text=text))


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    text = "name: a\ndataset: {name: digits}\nx: &d {n_samples: 5}\n"
    p = config(tmp_path, text=text)
    with pytest.raises(ConfigError, match="x: unknown key"):  # the merge itself is fine
        load_config(p)
    text = ("name: a\ndataset: {name: digits}\n"
            "evaluation: {<<: {n_samples: 5, batch_size: 4}, n_samples: 7}\n")
    assert load_config(config(tmp_path, text=text)).evaluation.n_samples == 7


@pytest.mark.parametrize("name", ["../../..", "..", ".", "/etc", "a/b", "a\\b", "C:x", " padded", ""])
def test_run_names_must_be_one_folder_name(tmp_path, name):
    with pytest.raises(ConfigError, match="not a usable run name"):
        load_config(config(tmp_path, text=BASE.replace("name: t", f"name: {name!r}")
                           % dict(defenses=DEFENSES, threats=THREATS, paper=PAPER)))
    with pytest.raises(ValueError, match="not a usable run name"):
        ExperimentConfig(name=name, dataset={"name": "digits"})


def test_an_explicit_output_dir_may_be_any_path(tmp_path):
    text = BASE.replace("name: t", f"name: t\noutput_dir: {tmp_path / '..' / 'elsewhere'}")
    cfg = load_config(config(tmp_path, text=text % dict(defenses=DEFENSES, threats=THREATS, paper=PAPER)))
    assert cfg.output_dir.endswith("elsewhere")


# ------------------------------------------------------------------------ part 5: entry points
def linear(classes=3, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, classes)).to(dtype)


THREAT = ThreatModel("linf", 0.1, (0.0, 1.0))
X = torch.rand(6, 1, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def both_entry_points(model, x, y, **kw):
    """The error of run_attack and of evaluate_robustness (each must raise UserInputError)."""
    msgs = []
    for call in (lambda: run_attack("pgd", model, x, y, THREAT, steps=2, **kw),
                 lambda: evaluate_robustness(model, x, y, THREAT, attacks=["pgd"], checks=False,
                                             progress=False)):
        with pytest.raises(UserInputError) as e:
            call()
        msgs.append(str(e.value))
    return msgs


@pytest.mark.parametrize("case, model, x, y, match", [
    ("empty batch", linear(), X[:0], Y[:0], "no inputs to attack"),
    ("label outside the classes", linear(), X, torch.tensor([0, 1, 2, 0, 1, 3]),
     r"label 3 .* outputs 3 classes"),
    ("model narrower than the labels", linear(classes=2), X, Y, r"label 2 .* outputs 2 classes"),
    ("negative label", linear(), X, torch.tensor([0, 1, 2, 0, 1, -1]), r"labels must be class indices >= 0"),
    ("float64 inputs", linear(), X.double(), Y, r"inputs are torch.float64 .* x.float\(\) .* model.to"),
    ("bfloat16 inputs", linear(), X.bfloat16(), Y, r"inputs are torch.bfloat16 .* x.float\(\)"),
    ("float16 inputs", linear(), X.half(), Y, r"inputs are torch.float16 .* x.float\(\)"),
    ("float32 inputs, float64 model", linear(dtype=torch.float64), X, Y,
     r"inputs are torch.float32 .* torch.float64; convert the inputs with x.to\(torch.float64\)"),
])
def test_entry_points_refuse_bad_batches(case, model, x, y, match):
    for msg in both_entry_points(model, x, y):
        assert __import__("re").search(match, msg), (case, msg)


@pytest.mark.parametrize("rows", [[0], [0, 1, 2, 3, 4, 5], [3]])
def test_non_finite_logits_are_refused_with_the_row_count(rows):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = linear()

        def forward(self, x):
            out = self.lin(x).clone()
            out[[r for r in rows if r < out.shape[0]]] = float("nan")
            return out

    with pytest.raises(UserInputError, match=rf"NaN or inf logits on {len(rows)} of 6 clean inputs"):
        evaluate_robustness(Broken(), X, Y, THREAT, attacks=["pgd"], checks=False, progress=False)
    with pytest.raises(UserInputError, match=rf"NaN or inf logits on {len(rows)} of 6 rows"):
        run_attack("fgsm", Broken(), X, Y, THREAT)


@pytest.mark.parametrize("attack, params, match", [
    ("bim", {"steps": 0}, "steps must be a whole number >= 1"),
    ("mim", {"steps": 0}, "steps must be a whole number >= 1"),
    ("apgd", {"steps": 0}, "steps must be a whole number >= 1"),
    ("pgd", {"steps": -1}, "steps must be a whole number >= 0"),
    ("pgd", {"step_size": 0.0}, "step_size must be a number > 0"),
    ("bim", {"step_size": -0.01}, "step_size must be a number > 0"),
    ("mim", {"step_size": 0}, "step_size must be a number > 0"),
    ("pgd", {"steps": "abc"}, "got 'abc'; give a number"),
    ("pgd", {"restarts": 0}, "restarts must be a whole number >= 1"),
    ("transfer", {"surrogate": None, "attack": "pgd", "attack_params": {"step_size": 0}},
     "pgd: step_size must be a number > 0"),
])
def test_run_attack_refuses_bad_parameter_values(attack, params, match):
    with pytest.raises(UserInputError, match=match):
        run_attack(attack, linear(), X, Y, THREAT, **params)


def test_evaluate_robustness_checks_the_battery_before_attacking():
    with pytest.raises(UserInputError, match="steps must be"):
        evaluate_robustness(linear(), X, Y, THREAT, attacks=["fgsm", {"attack": "bim", "steps": 0}],
                            checks=False, progress=False)


def test_pgd_with_zero_steps_stays_possible_from_python():
    """Documented escape hatch: pgd(steps=0) judges the (random-start) inputs; configs refuse it."""
    res = run_attack("pgd", linear(), X, Y, THREAT.with_eps(0.0), steps=0)
    assert len(res) == 6


@pytest.mark.parametrize("layer, warned", [
    (nn.Dropout(0.5), True), (nn.AlphaDropout(0.5), True), (nn.Sequential(nn.Dropout(0.2)), True),
    ("testtime", False), ("eval", False),
])
def test_dropout_in_training_mode_is_warned_about(layer, warned):
    from robustcompress.nn.noise import TestTimeDropout

    drop = TestTimeDropout(0.1) if layer == "testtime" else (nn.Dropout(0.5) if layer == "eval" else layer)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), drop, nn.Linear(8, 3))
    if layer == "eval":
        model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_attack("fgsm", model, X, Y, THREAT, mc_samples=2 if layer == "testtime" else None)
    msgs = [str(w.message) for w in caught if "dropout" in str(w.message)]
    assert bool(msgs) == warned, msgs
    if warned:
        assert "model.eval()" in msgs[0] and "TestTimeDropout" in msgs[0]


def test_attacks_leave_no_hook_on_the_model():
    model = linear()
    run_attack("pgd", model, X, Y, THREAT, steps=2)
    with pytest.raises(UserInputError):
        run_attack("pgd", model, X, torch.tensor([0, 1, 2, 0, 1, 9]), THREAT)
    assert not model._forward_hooks and not model[1]._forward_hooks


@pytest.mark.parametrize("param, match", [
    ("steps=abc", r"steps must be a whole number >= 1, got 'abc'; give a number"),
    ("step_size=fast", r"step_size must be a number > 0, got 'fast'"),
    ("steps=0", r"steps must be a whole number >= 1, got 0"),
    ("random_start=False", r"random_start must be true or false, got 'False'"),
    ("eot_samples=3", r"--eot"),
])
def test_cli_param_values_give_one_message(param, match, capsys, tmp_path):
    from robustcompress.cli import main

    # refused before the checkpoint is even read (it does not exist)
    rc = main(["attack", "--checkpoint", str(tmp_path / "missing"), "--attack", "pgd", "--eps", "0.1",
               "--param", param])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert __import__("re").search(match, err), err
