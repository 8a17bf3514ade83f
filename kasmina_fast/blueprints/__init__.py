"""Seed blueprints. Importing this package registers the built-in CNN and transformer blueprints."""

from kasmina_fast.blueprints import cnn, transformer  # noqa: F401  (registration)
from kasmina_fast.blueprints.registry import BlueprintRegistry, BlueprintSpec, register_blueprint

__all__ = ["BlueprintRegistry", "BlueprintSpec", "register_blueprint"]
