"""Defenses, one file per method. Importing this package registers every defense.

Add a new method by creating ``defenses/<method>.py`` with a :class:`DefenseSpec` and importing it
below.
"""

from robustcompress.defenses.base import (  # noqa: F401
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    get_defense,
    list_defenses,
    register_defense,
)
from robustcompress.defenses import pruning  # noqa: F401,E402
from robustcompress.defenses import quantization  # noqa: F401,E402
from robustcompress.defenses import sap  # noqa: F401,E402
from robustcompress.defenses import stochastic_baselines  # noqa: F401,E402
from robustcompress.defenses import feedback_learning  # noqa: F401,E402
from robustcompress.defenses import tensorization  # noqa: F401,E402
from robustcompress.defenses import adversarial_training  # noqa: F401,E402
from robustcompress.defenses import anp_vs  # noqa: F401,E402
from robustcompress.defenses import feature_squeezing  # noqa: F401,E402
from robustcompress.defenses import defensive_quantization  # noqa: F401,E402
from robustcompress.defenses import independent  # noqa: F401,E402
