"""The feature backends. Each module in this package defines one subclass of
:class:`~clusterimg.features.base.Method`; dropping a new module here is all it
takes to add a backend (the CLI lists its name and options automatically)."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from clusterimg.features.base import Method, Option

__all__ = ["Method", "Option", "available", "get_method"]


@lru_cache(maxsize=None)
def available() -> dict[str, type[Method]]:
    """Backend name -> class, discovered from the modules of this package."""
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return dict(sorted(found.items()))


def get_method(name: str, **options) -> Method:
    """A configured backend; ValueError with a user-facing message if the
    name or an option is wrong."""
    methods = available()
    if name not in methods:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(methods)})")
    return methods[name](**options)
