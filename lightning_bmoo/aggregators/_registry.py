"""Names for the aggregators, so configurations can say ``aggregator="mgda"``."""

from __future__ import annotations

import inspect
from typing import Any

from ._base import Aggregator

_REGISTRY: dict[str, type[Aggregator]] = {}


def register_aggregator(cls: type[Aggregator]) -> type[Aggregator]:
    """Registers an :class:`Aggregator` subclass under its ``name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise TypeError(f"Only Aggregator subclasses can be registered, got {cls!r}.")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"An aggregator named {cls.name!r} is already registered: {existing}.")
    _REGISTRY[cls.name] = cls
    return cls


def available_aggregators() -> list[str]:
    """Returns the registered aggregator names, sorted."""
    return sorted(_REGISTRY)


def get_aggregator(name: str | Aggregator, **options: Any) -> Aggregator:
    """Builds the aggregator registered as ``name`` with ``options``.

    An :class:`Aggregator` instance is returned as it is (then ``options`` must be empty).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or an option
            the method does not accept (the message lists the accepted ones).
    """
    if isinstance(name, Aggregator):
        if options:
            raise ValueError(
                f"Options {sorted(options)} were given with an aggregator instance {name!r}; "
                "pass either a name with options or a configured instance."
            )
        return name
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(
            f"Unknown aggregator {name!r}. Valid names: {', '.join(available_aggregators())}."
        )
    cls = _REGISTRY[name.lower()]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"Aggregator {cls.name!r} does not accept option(s) {unknown}. "
            f"Accepted options: {accepted or 'none'}."
        )
    return cls(**options)
