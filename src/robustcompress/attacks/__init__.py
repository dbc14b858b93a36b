"""Attacks: threat model, input gradients with EOT, MC-averaged verdicts, and the attacks themselves.

``from robustcompress.attacks import ThreatModel, run_attack``::

    threat = ThreatModel.from_spec("linf", "8/255", info)
    result = run_attack("pgd", model, x, y, threat, steps=20, generator=torch.Generator().manual_seed(0))
    result.robust_accuracy, result.success, result.x_adv

Every attack is a plain function in ``attacks/<name>.py`` registered in
:mod:`robustcompress.attacks.registry`; importing this package registers all of them.
"""

from robustcompress.attacks.threat import ThreatModel  # noqa: F401
from robustcompress.attacks.base import (  # noqa: F401
    AttackResult,
    DEFAULT_EOT_SAMPLES,
    DEFAULT_MC_SAMPLES,
    SampleNoise,
    input_gradient,
    judge,
    mc_predict,
    objective,
)
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

# --- attacks owned by the attack-eval helper (they append their imports below) -----------------
from robustcompress.attacks import cw, deepfool, square  # noqa: F401,E402
from robustcompress.attacks.checks import Flag, masking_checks  # noqa: F401,E402
from robustcompress.attacks.adaptive import RobustnessReport, evaluate_robustness  # noqa: F401,E402
