"""Defenses that train do so with the run's training recipe inside an experiment (batch size,
optimizer, schedule, crop, ...) plus only their own overrides (their epochs, a paper's schedule);
outside a run the plain Python API keeps TrainConfig's defaults (DefenseContext.train_config)."""

import pytest
import torch

from robustcompress.defenses import DefenseContext, get_defense
from robustcompress.experiments.config import ExperimentConfig

RECIPE = {"epochs": 1, "batch_size": 32, "crop_padding": 2, "optimizer": "adam", "lr": 0.003,
          "weight_decay": 1e-5}
#: defense -> (params, the overrides its fits must carry on top of the recipe)
CASES = {
    "feedback_learning": ({"rounds": 2, "epochs": 1, "pool": 40, "n_high": 2, "n_medium": 2,
                           "n_low": 2}, {"epochs": 1}),
    "quantize": ({"bits": 4, "qat_epochs": 2}, {"epochs": 2}),
    "tensorization": ({"theta": 0.9, "pretrain_epochs": 1, "finetune_epochs": 2}, {}),
    "xnor": ({"finetune_epochs": 2}, {"epochs": 2}),
    "defensive_quantization": ({"epochs": 2}, {"epochs": 2}),
    "prune": ({"rho": 0.5, "rounds": 2, "retrain_epochs": 2}, {"epochs": 2}),
    "anp_vs": ({"epochs": 2, "steps": 2, "lr_steps": [0.5]},
               {"epochs": 2, "schedule": "multistep", "milestones": [1]}),
    "adversarial_training": ({"eps": 0.1, "steps": 2, "epochs": 2}, {"epochs": 2}),
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Builds the base and every defense of CASES in one tiny run (no evaluation) and records
    every fit call: (the defense step that made it or "base", its TrainConfig, dataset size)."""
    from robustcompress.data import load_dataset
    from robustcompress.experiments.runner import Runner
    import robustcompress.training as training

    cfg = ExperimentConfig(
        name="recipe", seed=2, output_dir=str(tmp_path_factory.mktemp("recipe") / "run"),
        dataset={"name": "digits", "train_limit": 160, "test_limit": 40},
        model={"name": "lenet5"}, training=RECIPE,
        defenses=[{"name": m, "method": m, "params": p} for m, (p, _) in CASES.items()])
    calls, step = [], {"now": "base"}
    real_fit, real_apply = training.fit, Runner.apply_defense

    def fit(model, dataset, config=None, **kw):
        calls.append((step["now"], config, len(dataset.train)))
        return real_fit(model, dataset, config, **kw)

    def apply_defense(self, plan, parent, index_path):
        step["now"] = plan.method
        return real_apply(self, plan, parent, index_path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "fit", fit)
        mp.setattr(Runner, "apply_defense", apply_defense)
        runner = Runner(cfg, progress=False)
        runner.dataset = load_dataset("digits", train_limit=160, test_limit=40)
        runner.build_models()
    return calls


@pytest.mark.parametrize("method", sorted(CASES))
def test_defense_fits_receive_the_run_recipe_and_only_their_overrides(recorded, method):
    params, overrides = CASES[method]
    fits = [(c, n) for m, c, n in recorded if m == method]
    assert fits, f"{method} trained nothing"
    for config, _n in fits:
        assert config.batch_size == 32 and config.crop_padding == 2, (method, config)
        assert config.optimizer == "adam" and config.lr == 0.003 and config.weight_decay == 1e-5
        for k, v in overrides.items():
            assert getattr(config, k) == v, (method, k)


def test_the_overrides_of_each_defense(recorded):
    by = {}
    for m, c, n in recorded:
        by.setdefault(m, []).append((c, n))
    # pretrain at theta = 1 for 1 epoch, then fine-tune at theta for 2
    assert [c.epochs for c, _ in by["tensorization"]] == [1, 2]
    # one fit per pruning round / feedback round, each with its own seed (run seed 2 + k)
    assert [c.seed for c, _ in by["prune"]] == [3, 4]
    assert [c.seed for c, _ in by["feedback_learning"]] == [2, 3]
    # feedback learning retrains on the training set plus the examples it generated
    assert all(n > 160 for _, n in by["feedback_learning"])
    assert by["feedback_learning"][1][1] >= by["feedback_learning"][0][1]


def test_train_config_is_the_run_recipe_or_the_defaults_outside_a_run(digits):
    plain = DefenseContext(dataset=digits, device=torch.device("cpu"), seed=4)
    assert plain.train_config(epochs=3).model_dump() == {
        **plain.train_config().model_dump(), "epochs": 3}
    assert plain.train_config().batch_size == 128 and plain.train_config().seed == 4
    # a defense's standalone defaults apply only when no run recipe exists
    assert plain.train_config(defaults={"batch_size": 64}).batch_size == 64
    run = DefenseContext(dataset=digits, device=torch.device("cpu"), seed=4,
                         recipe={"seed": 4, **RECIPE})
    cfg = run.train_config(defaults={"batch_size": 64}, epochs=5)
    assert (cfg.batch_size, cfg.crop_padding, cfg.epochs, cfg.seed) == (32, 2, 5, 4)


def test_plain_api_trains_with_the_defaults_on_the_context(digits, monkeypatch):
    """Without a run (ctx.fit None): TrainConfig's defaults, the context's seed, the defense's
    epochs (ANP-VS: its original LeNet batch of 64)."""
    import robustcompress.training as training
    from robustcompress.models import build_model

    seen = []
    monkeypatch.setattr(training, "fit",
                        lambda model, data, config=None, **kw: seen.append(config) or
                        training.FitResult(model))
    torch.manual_seed(0)
    model = build_model("lenet5", digits.info)
    ctx = DefenseContext(dataset=digits, device=torch.device("cpu"), seed=7, progress=False)
    for method in ("quantize", "anp_vs"):
        spec = get_defense(method)
        params = dict(CASES[method][0], export=False) if method == "anp_vs" else CASES[method][0]
        spec.apply(model, spec.Params(**params), ctx)
    q, anp = seen
    assert (q.batch_size, q.crop_padding, q.epochs, q.seed, q.optimizer) == (128, 0, 2, 7, "adam")
    assert (anp.batch_size, anp.epochs, anp.milestones) == (64, 2, [1])


def test_a_fixed_defense_gets_new_keys_and_the_others_keep_theirs():
    """A defense's revision (raised by a fix that changes its models) enters its run-folder key,
    so a re-run rebuilds variants made before the fix; revision 0 keeps the key it always had."""
    from types import SimpleNamespace

    from robustcompress.experiments.config import stable_hash
    from robustcompress.experiments.runner import Runner

    assert get_defense("feedback_learning").revision >= 1
    for method, (params, _) in CASES.items():
        d = SimpleNamespace(method=method, training={"epochs": 1})
        before = stable_hash(["parent", method, params, {"epochs": 1}])
        assert (Runner.defense_key("parent", d, params) == before) == (get_defense(method).revision == 0)
