"""Dense seed blueprints on ``[B, C]`` features (an MLP's hidden layer, a classifier
head's input, a tabular model, a policy network): the transformer blueprints that
act on each feature vector alone (``PER_VECTOR``), the same factories registered
for the ``dense`` topology: residual and identity at birth. (``attention`` and
``flex_attention`` mix positions, which a ``[B, C]`` point does not have.)"""

from __future__ import annotations

import dataclasses

from kasmina_fast.blueprints import transformer  # noqa: F401  (the specs registered first)
from kasmina_fast.blueprints.registry import BlueprintRegistry

PER_VECTOR = ("noop", "norm", "lora", "mlp")

for _id in PER_VECTOR:
    _spec = BlueprintRegistry.get("transformer", _id)
    BlueprintRegistry.register(dataclasses.replace(_spec, topology="dense"))
