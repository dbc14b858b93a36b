"""Model zoo (registry by name). Importing this package registers every architecture.

One file per family: :mod:`.lenet` (lenet300, lenet5), :mod:`.cnn` (cnn4), :mod:`.vgg` (vgg,
vgg_sparse, vgg16), :mod:`.resnet` (resnet20, resnet32, resnet18, wrn), :mod:`.soundnet` (soundnet5).
The contract every model follows is in :mod:`.base`. Users' own models (a factory function,
optional weights, a declared input box) come through :mod:`.foreign`; :func:`build_from_spec`
rebuilds either kind from ``model.robustcompress_spec``.
"""

from robustcompress.models.registry import Normalize, build_model, list_models, register_model  # noqa: F401
from robustcompress.models import cnn, lenet, resnet, soundnet, vgg  # noqa: F401,E402  (register)
from robustcompress.models.base import check_contract, check_input_shape  # noqa: F401,E402
from robustcompress.models.features import features, select_modules  # noqa: F401,E402
from robustcompress.models.foreign import (  # noqa: F401,E402  (bring your own model)
    Normalized,
    build_foreign,
    build_from_spec,
    load_factory,
    load_weights,
    with_normalization,
)
