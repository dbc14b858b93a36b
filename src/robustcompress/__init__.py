"""robustcompress: make neural networks small *and* adversarially robust, and measure it honestly.

Sub-packages follow the data flow of DESIGN.md (one direction, no back edges)::

    data -> models -> training -> defenses -> attacks -> metrics -> experiments -> cli
"""

__version__ = "0.1.0"

#: Registry of the packages that register parts of a checkpoint (see
#: :func:`robustcompress.training.checkpoint.register_checkpoint_part`); the checkpoint code
#: imports them by this list when it saves or loads, so it never names a later package itself.
CHECKPOINT_PLUGINS = ("robustcompress.defenses",)

from robustcompress.errors import RobustCompressError, UserInputError  # noqa: E402,F401
