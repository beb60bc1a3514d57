"""The feature backends. Each module in this package defines one subclass of
:class:`~clusterimg.features.base.Method`; dropping a new module here is all it
takes to add a backend (the CLI lists its name and options automatically)."""
from __future__ import annotations

from functools import lru_cache

from clusterimg.features.base import Method, Option
from clusterimg.options import discover_plugins

__all__ = ["Method", "Option", "available", "get_method"]


@lru_cache(maxsize=None)
def available() -> dict[str, type[Method]]:
    """Backend name -> class, discovered from the modules of this package."""
    return discover_plugins(__name__, __path__, Method)


def get_method(name: str, **options) -> Method:
    """A configured backend; ValueError with a user-facing message if the
    name or an option is wrong."""
    methods = available()
    if name not in methods:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(methods)})")
    return methods[name](**options)
