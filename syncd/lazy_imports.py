"""Import LanceDB without the start-up costs a syncd process gets nothing for.

``import lancedb`` imports ``lance_namespace``, which imports the generated OpenAPI client of LanceDB's REST
namespace service (``lance_namespace_urllib3_client``). That package's ``__init__`` builds pydantic
validators for every REST method of the service, which is most of the import's time (the figures are in
``benchmarks/README.md`` → "One-shot commands"), and syncd never talks to a REST namespace: it opens
folders and object-store URIs. Every one-shot command pays that import before doing any work.

:func:`defer_rest_client` registers the client package without running its ``__init__``: its submodules
(``.models``, which ``lance_namespace`` does import) load as usual from the package's folder, and the first
access to anything the ``__init__`` defines runs it in full, so a code path that does use the REST client
gets exactly the module it would have had. Nothing is replaced or patched: the package's own code runs, only
later. If the package is already imported, missing, or not a package, this does nothing.

On Python < 3.12, LanceDB marks its methods with the ``overrides`` package's ``@override``, which
disassembles the calling frame's bytecode for every method to check its signature against the base
class, the second largest part of the import. :func:`import_lancedb` swaps in ``typing_extensions.override``
for the duration of ``import lancedb`` only: it sets the same ``__override__`` marker, so the
``EnforceOverrides`` metaclass still checks that every overriding method is marked; what is skipped is the
signature comparison, which LanceDB's own test suite already runs. The original is restored at once, so
other code in the process that uses ``overrides`` is unaffected.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REST_CLIENT = "lance_namespace_urllib3_client"


def defer_rest_client(name: str = REST_CLIENT) -> bool:
    """Register ``name`` as a package whose ``__init__`` runs on first attribute access; True if deferred."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    module = types.ModuleType(name)
    module.__spec__ = spec
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__loader__ = spec.loader
    module.__package__ = name
    loader = spec.loader

    def load_on_first_use(attr: str) -> Any:
        # Module-level __getattr__ (PEP 562) is consulted only for names the module lacks: the submodules
        # set as attributes by the import system never get here. Remove it first, so the real __init__
        # (which sets the same names) runs once and later misses raise AttributeError as usual.
        module.__dict__.pop("__getattr__", None)
        loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = load_on_first_use  # type: ignore[method-assign]
    sys.modules[name] = module
    return True


@contextmanager
def _marker_only_override() -> Iterator[None]:
    """Within the block, ``overrides.override`` only marks methods (see the module's docstring)."""
    try:
        import overrides  # type: ignore[import-untyped, unused-ignore]
        from typing_extensions import override as marker
    except ImportError:
        yield
        return
    original = overrides.override
    setattr(overrides, "override", marker)  # noqa: B010 - the module attribute is what lancedb imports
    try:
        yield
    finally:
        setattr(overrides, "override", original)  # noqa: B010


def import_lancedb() -> Any:
    """``import lancedb``, with the REST client deferred and, on Python < 3.12, the marker-only override."""
    if "lancedb" in sys.modules:
        return sys.modules["lancedb"]
    defer_rest_client()
    if sys.version_info >= (3, 12):
        import lancedb
    else:
        with _marker_only_override():
            import lancedb
    return lancedb
