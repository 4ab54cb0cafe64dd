"""Registers the strategy names with Lightning whenever Lightning is imported.

``import lightning_bmoo`` must not load Lightning (the plain-torch hook and the report do not
need it), yet ``Trainer(strategy="bmoo")`` must work whichever of the two the user imports
first. So: if Lightning is already loaded, register now; else register right after
``lightning.pytorch`` finishes loading, through a one-shot post-import hook.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

_TARGET = "lightning.pytorch"


def register_when_lightning_loads() -> None:
    """Registers now if Lightning is loaded, else once it is."""
    if _TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _Watcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())


def _register() -> None:
    importlib.import_module("lightning_bmoo.strategy")  # its import registers the names


class _Watcher(importlib.abc.MetaPathFinder):
    """Finds ``lightning.pytorch`` through the other finders and wraps its loader."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            _register()
        except Exception as error:  # never break the user's import of Lightning
            warnings.warn(
                f"lightning_bmoo could not register its strategy names with Lightning "
                f"({type(error).__name__}: {error}); import lightning_bmoo.strategy yourself.",
                stacklevel=2,
            )
