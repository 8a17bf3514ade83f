"""Growth inside a training loop: :func:`sync_optimizer` keeps an optimizer and its
schedule in step with a growing model; :class:`Grower` runs the whole protocol."""

from kasmina_fast.training.grower import EpochReport, Grower
from kasmina_fast.training.optimizer import SUPPORTED_SCHEDULERS, sync_optimizer

__all__ = ["SUPPORTED_SCHEDULERS", "EpochReport", "Grower", "sync_optimizer"]
