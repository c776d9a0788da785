"""Connector registry: every connector type, built-in or third-party, comes from the
``syncd.connectors`` entry-point group."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.base import Connector

@functools.cache
def _targets() -> dict[str, str]:
    """``type name -> "module:Class"`` from the installed distributions' entry points (the built-ins are
    declared in pyproject.toml like any third-party connector)."""
    return {ep.name: ep.value for ep in entry_points(group="syncd.connectors")}


def connector_types() -> list[str]:
    return sorted(_targets())


def connector_class(type_name: str) -> type[Connector]:
    """The connector class registered under ``type_name``; KeyError names the known types."""
    target = _targets().get(type_name)
    if target is None:
        raise KeyError(f"unknown connector type {type_name!r} (known: {', '.join(connector_types())})")
    module_name, _, attr = target.partition(":")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise KeyError(f"connector type {type_name!r} is not available: {exc}") from None
    cls: type[Connector] = getattr(module, attr)
    return cls
