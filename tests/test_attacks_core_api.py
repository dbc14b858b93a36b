"""The package's public names: every attack is exported as its function, under its registry name."""

import importlib

import pytest

import robustcompress.attacks as attacks


@pytest.mark.parametrize("name", sorted(attacks.list_attacks()))
def test_every_registered_attack_is_exported_as_its_function(name):
    exported = getattr(attacks, name.replace("-", "_"))
    assert callable(exported) and not hasattr(exported, "__path__")
    assert exported is attacks.get_attack(name).fn
    assert name.replace("-", "_") in attacks.__all__


def test_cw_is_exported_under_both_names_and_the_modules_stay_importable():
    from robustcompress.attacks import RobustnessReport, cw, cw_l2, deepfool, evaluate_robustness
    from robustcompress.attacks import masking_checks, square

    assert cw is cw_l2 is attacks.get_attack("cw").fn
    assert deepfool.__name__ == "deepfool" and square.__name__ == "square"
    assert callable(evaluate_robustness) and callable(masking_checks) and isinstance(RobustnessReport, type)
    # module paths other packages import from
    assert callable(importlib.import_module("robustcompress.attacks.cw").cw_l2_perturb)
    assert callable(importlib.import_module("robustcompress.attacks.deepfool").deepfool_perturb)
    assert callable(importlib.import_module("robustcompress.attacks.square").p_selection)
    assert set(attacks.__all__) <= set(dir(attacks))
