"""Training: one fit loop with pluggable objectives, checkpoints, evaluation.

``fit(model, dataset, config, objective=..., checkpoint_dir=...)`` trains any zoo or defended
model; ``save_checkpoint`` / ``load_checkpoint`` write and rebuild models (safetensors + JSON);
``evaluate_accuracy`` measures clean accuracy (MC-averaged for stochastic models).
"""

from robustcompress.training.checkpoint import (  # noqa: F401
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from robustcompress.training.config import (  # noqa: F401
    TrainConfig,
    fraction_milestones,
    lr_factor,
    recipe_overrides,
)
from robustcompress.training.evaluate import (  # noqa: F401
    DEFAULT_MC_SAMPLES,
    confusion_matrix,
    confusion_summary,
    evaluate_accuracy,
    predict_proba,
)
from robustcompress.training.fit import FitResult, epoch_seed, fit  # noqa: F401
from robustcompress.training.objectives import CrossEntropy, Objective  # noqa: F401
