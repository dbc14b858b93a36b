"""Model zoo (registry by name). Importing this package registers every architecture."""

from robustcompress.models.registry import Normalize, build_model, list_models, register_model  # noqa: F401
