"""Compatibility names: what every attack shares, re-exported from the modules that own it.

Import from the owning module in new code:

* :mod:`robustcompress.attacks.results`: :class:`AttackResult`, the one return value of every
  attack.
* :mod:`robustcompress.attacks.losses`: ``LossFn``, ``LOSSES``, ``ce_loss``, ``cw_loss``,
  ``dlr_loss``, ``dlr_targeted_loss``, ``mask_label``, ``loss_label``, ``resolve_loss``.
* :mod:`robustcompress.attacks.draws`: EOT gradients and MC predictions (``input_gradient``,
  ``objective``, ``draw_logits``, ``mc_predict``), ``resolve_draws``, ``samples_vectorizable``,
  ``generator_scope``, ``bcast_rows``, ``DEFAULT_EOT_SAMPLES``, ``DEFAULT_MC_SAMPLES``.
* :mod:`robustcompress.attacks.verdicts`: ``judge``, ``prediction``, ``reached_goal``,
  ``within_budget``, ``finish``, ``finish_minimal``.
* :mod:`robustcompress.attacks.seeds`: ``SampleNoise``, ``draw_seed``, ``child_generator``.
* :mod:`robustcompress.attacks.validation`: ``check_attack_inputs``, ``no_side_effects``.
"""

from robustcompress.attacks.draws import (  # noqa: F401
    CPU_MAX_ROWS,
    DEFAULT_EOT_SAMPLES,
    DEFAULT_MC_SAMPLES,
    bcast_rows,
    draw_logits,
    generator_scope,
    input_gradient,
    mc_predict,
    objective,
    resolve_draws,
    samples_vectorizable,
)
from robustcompress.attacks.losses import (  # noqa: F401
    LOSSES,
    LossFn,
    ce_loss,
    cw_loss,
    dlr_loss,
    dlr_targeted_loss,
    loss_label,
    mask_label,
    resolve_loss,
)
from robustcompress.attacks.results import AttackResult  # noqa: F401
from robustcompress.attacks.seeds import SampleNoise, child_generator, draw_seed  # noqa: F401
from robustcompress.attacks.validation import check_attack_inputs, no_side_effects  # noqa: F401
from robustcompress.attacks.verdicts import (  # noqa: F401
    finish,
    finish_minimal,
    judge,
    prediction,
    reached_goal,
    within_budget,
)

__all__ = [
    "AttackResult", "CPU_MAX_ROWS", "DEFAULT_EOT_SAMPLES", "DEFAULT_MC_SAMPLES", "LOSSES", "LossFn",
    "SampleNoise", "bcast_rows", "ce_loss", "check_attack_inputs", "child_generator", "cw_loss",
    "dlr_loss", "dlr_targeted_loss", "draw_logits", "draw_seed", "finish", "finish_minimal",
    "generator_scope", "input_gradient", "judge", "loss_label", "mask_label", "mc_predict",
    "no_side_effects", "objective", "prediction", "reached_goal", "resolve_draws", "resolve_loss",
    "samples_vectorizable", "within_budget",
]
