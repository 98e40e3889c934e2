"""Named extension points: aggregation rules, attacks, local objectives, DP modes and datasets.

An extension is one module that registers its class (or function) under a key, with a one-line
description and a reference::

    @RULES.register("fedavg", description="...", reference="McMahan et al., AISTATS 2017")
    class FedAvg(Rule): ...

The config's allowed values, the reports' attack notes and the README's tables all come from
these registries, so nothing else spells the keys out. Each registry names the package that
holds its built-in entries; that package (whose ``__init__`` imports one module per entry) is
imported the first time the registry is read. This module imports nothing of fedlora's, so
``fedlora.config`` can depend on it while every extension depends on ``fedlora.config``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    key: str
    value: T
    description: str
    reference: str


class Registry(Generic[T]):
    """key -> (value, one-line description, reference), in registration order."""

    def __init__(self, kind: str, config_key: str, builtins: str):
        self.kind = kind  # what an entry is, for messages ("aggregation rule")
        self.config_key = config_key  # the config key whose allowed values these are
        self.builtins = builtins  # package whose import registers the built-in entries
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.builtins)

    def register(self, key: str, *, description: str, reference: str = "") -> Callable[[T], T]:
        """Decorator: register the decorated class or function under ``key``."""

        def decorate(value: T) -> T:
            self.add(key, value, description=description, reference=reference)
            return value

        return decorate

    def add(self, key: str, value: T, *, description: str, reference: str = "") -> None:
        if not key or key != key.strip():
            raise ValueError(f"{self.kind} key {key!r} must be a non-empty name without surrounding spaces")
        if key in self._entries and self._entries[key].value is not value:
            raise ValueError(f"{self.kind} {key!r} is already registered ({self._entries[key].value!r})")
        self._entries[key] = Entry(key, value, description, reference)

    def remove(self, key: str) -> None:
        """Take an entry out again (a test's toy extension cleans up after itself)."""
        self._entries.pop(key, None)

    def keys(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        self._load()
        return tuple(self._entries.values())

    def entry(self, key: str) -> Entry[T]:
        self._load()
        if key not in self._entries:
            raise ConfigError(
                f"{self.config_key} = {key!r} is not a known {self.kind}; choose one of {list(self._entries)}"
            )
        return self._entries[key]

    def get(self, key: str) -> T:
        return self.entry(key).value

    def __contains__(self, key: object) -> bool:
        self._load()
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


# The extension points. Values: a Rule subclass, an attack function, an Objective subclass, a
# DpMode subclass, a DatasetSource (their base modules say what each must provide).
RULES: Registry[Any] = Registry("aggregation rule", "federation.aggregation", "fedlora.rules")
ATTACKS: Registry[Any] = Registry("membership-inference attack", "evaluation.attacks", "fedlora.evaluation.attacks")
OBJECTIVES: Registry[Any] = Registry("local objective", "train.method", "fedlora.privacy.objectives")
DP_MODES: Registry[Any] = Registry("DP mode", "privacy.dp", "fedlora.privacy.dp")
DATASETS: Registry[Any] = Registry("dataset", "data.dataset", "fedlora.data")
