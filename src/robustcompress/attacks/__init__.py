"""Attacks: threat model, input gradients with EOT, MC-averaged verdicts, and the attacks themselves.

``from robustcompress.attacks import ThreatModel, run_attack``::

    threat = ThreatModel.from_spec("linf", "8/255", info)
    result = run_attack("pgd", model, x, y, threat, steps=20, generator=torch.Generator().manual_seed(0))
    result.robust_accuracy, result.success, result.x_adv

Every attack is a plain function in ``attacks/<name>.py`` registered in
:mod:`robustcompress.attacks.registry`; importing this package registers all of them, and the
package exports each attack function under its registry name (``pgd``, ``cw``, ``deepfool``, ...).
"""

from robustcompress.attacks.threat import ThreatModel  # noqa: F401
from robustcompress.attacks.results import AttackResult  # noqa: F401
from robustcompress.attacks.draws import (  # noqa: F401
    DEFAULT_EOT_SAMPLES,
    DEFAULT_MC_SAMPLES,
    input_gradient,
    mc_predict,
    objective,
)
from robustcompress.attacks.verdicts import judge  # noqa: F401
from robustcompress.attacks.seeds import SampleNoise  # noqa: F401
from robustcompress.attacks.registry import (  # noqa: F401
    get_attack,
    list_attacks,
    register_attack,
    run_attack,
)

# --- attacks owned by the attack-core helper ---------------------------------------------------
from robustcompress.attacks.fgsm import fgsm  # noqa: F401,E402
from robustcompress.attacks.bim import bim, bim_paper_schedule  # noqa: F401,E402
from robustcompress.attacks.pgd import pgd  # noqa: F401,E402
from robustcompress.attacks.mim import mim  # noqa: F401,E402
from robustcompress.attacks.rfgsm import rfgsm  # noqa: F401,E402
from robustcompress.attacks.apgd import apgd, apgd_t  # noqa: F401,E402
from robustcompress.attacks.transfer import transfer  # noqa: F401,E402
from robustcompress.attacks.noise import gaussian, uniform  # noqa: F401,E402
from robustcompress.attacks.eot import ExpectationModel  # noqa: F401,E402

# --- attacks owned by the attack-eval helper ---------------------------------------------------
from robustcompress.attacks.cw import cw_l2  # noqa: F401,E402
from robustcompress.attacks.deepfool import deepfool  # noqa: F401,E402
from robustcompress.attacks.square import square  # noqa: F401,E402
from robustcompress.attacks.fab import fab, fab_t  # noqa: F401,E402
from robustcompress.attacks.fmn import fmn  # noqa: F401,E402
from robustcompress.attacks.checks import Flag, masking_checks  # noqa: F401,E402
from robustcompress.attacks.adaptive import RobustnessReport, evaluate_robustness  # noqa: F401,E402

# --- torchattacks/Foolbox-style objects over the functions above (docs/attacks-objects.md) ----
from robustcompress.attacks.objects import (  # noqa: F401,E402
    APGD, APGDT, BIM, CW, FGSM, MIFGSM, MIM, PGD, PGDL2, RFGSM, Attack, DeepFool, Square,
    SweepResult, least_likely_targets, random_targets, run_attack_sweep,
)

# Like ``pgd`` above, every attack is exported as its function under its registry name, so
# ``robustcompress.attacks.cw`` is the C&W-L2 function (the module stays importable by its path:
# ``from robustcompress.attacks.cw import cw_l2_perturb``). Bound last so that no later submodule
# import rebinds the name to the module.
cw = cw_l2

__all__ = [
    "APGD", "APGDT", "Attack", "BIM", "CW", "DeepFool", "FGSM", "MIFGSM", "MIM", "PGD", "PGDL2",
    "RFGSM", "Square", "SweepResult", "least_likely_targets", "random_targets", "run_attack_sweep",
    "AttackResult", "DEFAULT_EOT_SAMPLES", "DEFAULT_MC_SAMPLES", "ExpectationModel", "Flag",
    "RobustnessReport", "SampleNoise", "ThreatModel", "apgd", "apgd_t", "bim", "bim_paper_schedule",
    "cw", "cw_l2", "deepfool", "evaluate_robustness", "fab", "fab_t", "fgsm", "fmn", "gaussian", "get_attack",
    "input_gradient", "judge", "list_attacks", "masking_checks", "mc_predict", "mim", "objective",
    "pgd", "register_attack", "rfgsm", "run_attack", "square", "transfer", "uniform",
]
