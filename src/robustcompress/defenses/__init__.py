"""Defenses, one file per method. Importing this package registers every defense.

Add a new method by creating ``defenses/<method>.py`` with a :class:`DefenseSpec` and importing it
below.
"""

from robustcompress.defenses.base import (  # noqa: F401
    DefenseContext,
    DefenseParams,
    DefenseRecord,
    DefenseSpec,
    defense_records,
    get_defense,
    list_defenses,
    record_defense,
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

# The plain Python API of every method, importable from the package as DESIGN.md promises
# (``from robustcompress.defenses import tensorize, sap``). Where a function shares its module's
# name (sap, anp_vs, ...), the package attribute is the function; import helpers from the module
# itself (``from robustcompress.defenses.sap import predict``).
from robustcompress.defenses.tensorization import binarize, tensorize, train_tensorized  # noqa: F401,E402
from robustcompress.defenses.sap import sap  # noqa: F401,E402
from robustcompress.defenses.stochastic_baselines import (  # noqa: F401,E402
    activation_noise,
    deterministic_weight_pruning,
    dropout_after_relu,
    weight_noise,
)
from robustcompress.defenses.pruning import progressive_prune, prune  # noqa: F401,E402
from robustcompress.defenses.quantization import quantize  # noqa: F401,E402
from robustcompress.defenses.feedback_learning import feedback_learning  # noqa: F401,E402
from robustcompress.defenses.anp_vs import anp_vs, export_pruned  # noqa: F401,E402
from robustcompress.defenses.adversarial_training import adversarial_training  # noqa: F401,E402
from robustcompress.defenses.feature_squeezing import feature_squeezing  # noqa: F401,E402
from robustcompress.defenses.defensive_quantization import defensive_quantization  # noqa: F401,E402
