"""robustcompress: make neural networks small *and* adversarially robust, and measure it honestly.

Sub-packages follow the data flow of DESIGN.md (one direction, no back edges)::

    data -> models -> training -> defenses -> attacks -> metrics -> experiments -> cli
"""

__version__ = "0.1.0"

from robustcompress.errors import RobustCompressError, UserInputError  # noqa: E402,F401
