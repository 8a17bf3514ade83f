"""Seed blueprints. Importing this package registers the built-in CNN, transformer and
dense blueprints."""

from kasmina_fast.blueprints import cnn, dense, transformer  # noqa: F401  (registration)
from kasmina_fast.blueprints.registry import BlueprintRegistry, BlueprintSpec, register_blueprint

__all__ = ["BlueprintRegistry", "BlueprintSpec", "register_blueprint"]
