"""Blueprint catalog: how to build each seed module, per topology.

Every blueprint is shape-preserving and the identity at birth (its last
layer starts at zero, or an equivalent), so germination never shifts the
host's output; ``param_count(channels)`` is exact.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import ClassVar

from torch import nn


@dataclasses.dataclass(frozen=True)
class BlueprintSpec:
    """``factory(channels, **options)`` builds the seed; its keyword arguments after
    ``channels`` are the blueprint's options."""

    blueprint_id: str
    topology: str
    factory: Callable[..., nn.Module]
    param_count: Callable[[int], int]
    description: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        params = list(inspect.signature(self.factory).parameters.values())[1:]
        return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


class BlueprintRegistry:
    """Registered blueprints by (topology, id)."""

    _specs: ClassVar[dict[tuple[str, str], BlueprintSpec]] = {}

    @classmethod
    def register(cls, spec: BlueprintSpec) -> BlueprintSpec:
        key = (spec.topology, spec.blueprint_id)
        if key in cls._specs:
            raise ValueError(f"blueprint {spec.blueprint_id!r} is already registered for {spec.topology}")
        cls._specs[key] = spec
        return spec

    @classmethod
    def unregister(cls, topology: str, blueprint_id: str) -> None:
        cls._specs.pop((topology, blueprint_id), None)

    @classmethod
    def list_for_topology(cls, topology: str) -> list[BlueprintSpec]:
        return [s for (t, _), s in sorted(cls._specs.items()) if t == topology]

    @classmethod
    def get(cls, topology: str, blueprint_id: str) -> BlueprintSpec:
        topologies = sorted({t for t, _ in cls._specs})
        if topology not in topologies:
            raise ValueError(f"unknown topology {topology!r}; available: {', '.join(topologies)}")
        spec = cls._specs.get((topology, blueprint_id))
        if spec is None:
            names = ", ".join(s.blueprint_id for s in cls.list_for_topology(topology))
            raise ValueError(f"unknown blueprint {blueprint_id!r} for {topology}; available: {names}")
        return spec

    @classmethod
    def create(cls, topology: str, blueprint_id: str, channels: int, **options) -> nn.Module:
        """Build the seed; ``options`` go to the blueprint's factory (ValueError for one it
        does not take, listing those it does)."""
        spec = cls.get(topology, blueprint_id)
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            takes = ", ".join(spec.options) or "none"
            raise ValueError(
                f"blueprint {blueprint_id!r} ({topology}) has no option {', '.join(map(repr, unknown))}; "
                f"its options: {takes}"
            )
        return spec.factory(channels, **options)


def register_blueprint(
    topology: str, blueprint_id: str, param_count: Callable[[int], int], description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator form of :meth:`BlueprintRegistry.register`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BlueprintRegistry.register(BlueprintSpec(blueprint_id, topology, factory, param_count, description))
        return factory

    return wrap
