"""Where the library's Triton kernels run: CUDA tensors, with triton installed.

:func:`cuda_kernels` imports a kernel module and compiles it once per device (a warm-up call),
so that a missing triton means the caller's torch fallback, and a broken toolchain costs one
``RuntimeWarning`` and that fallback, never an error in the middle of a run. The kernel modules
(``nn/_sap_triton.py``, ``attacks/_noise_triton.py``) import triton at the top and are imported
only here. Tests run the same kernels on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set by tests/conftest.py where no GPU driver exists).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType
from typing import Callable, Optional

import torch


def cuda_kernels(device: torch.device, module: str, warm_up: Callable[[ModuleType, str], object],
                 what: str) -> Optional[ModuleType]:
    """The kernel module ``module`` for ``device``, or ``None``: not CUDA, triton missing, or
    ``warm_up(module, device)`` failed (then once per device a warning naming ``what``, e.g.
    ``"SAP sampler"``)."""
    if device.type != "cuda":
        return None
    return load_kernels(module, str(device), warm_up, what)


@functools.lru_cache(maxsize=16)
def load_kernels(module: str, device: str, warm_up: Callable[[ModuleType, str], object],
                 what: str) -> Optional[ModuleType]:
    """:func:`cuda_kernels` without the device check (cached per module and device)."""
    try:
        kernels = importlib.import_module(module)
    except ImportError:  # no triton: the torch fallback, which every caller has
        return None
    try:  # compile now, so that a toolchain failure falls back here once, with a warning
        warm_up(kernels, device)
    except Exception as err:
        warnings.warn(f"the Triton {what} is unavailable ({err}); using the torch {what} "
                      "(same law, slower)", RuntimeWarning, stacklevel=3)
        return None
    return kernels


__all__ = ["cuda_kernels", "load_kernels"]
