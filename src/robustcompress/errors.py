"""Error types.

Every mistake a *user* can make (bad path, corrupted file, wrong eps units, invalid config, ...)
raises a subclass of :class:`UserInputError` whose message names the problem and the fix. The CLI
prints such errors as one line, without a traceback; anything else is a bug and keeps its traceback.
"""


class RobustCompressError(Exception):
    """Base class of all errors raised on purpose by robustcompress."""


class UserInputError(RobustCompressError, ValueError):
    """The user asked for something invalid; the message says what and how to fix it."""


class DataError(UserInputError):
    """A dataset file is missing, corrupted or in an unexpected format."""


class ConfigError(UserInputError):
    """A configuration file or option is invalid."""


class ThreatModelError(UserInputError):
    """Inputs or an attack budget do not fit the declared threat model (bounds, eps units, norm)."""


def describe_validation(err: Exception) -> str:
    """One line naming every field a pydantic ``ValidationError`` rejected and why
    (``"lr_steps: Value error, ...; epochs: ..."``); other errors give their message."""
    errs = err.errors() if callable(getattr(err, "errors", None)) else [{"loc": (), "msg": str(err)}]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in errs)
