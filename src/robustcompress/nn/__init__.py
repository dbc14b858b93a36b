"""Reusable layers and pure functions (functional core + thin modules).

The randomness / differentiability protocol every layer here follows is in
:mod:`robustcompress.nn.protocol`; surrogate gradients for non-differentiable ops are in
:mod:`robustcompress.nn.ste`.
"""

from robustcompress.nn.protocol import (  # noqa: F401
    freeze_noise,
    is_non_differentiable,
    is_stochastic,
    model_properties,
    straight_through,
    use_generator,
)
from robustcompress.nn.ste import SURROGATES, surrogate_gradient  # noqa: F401
