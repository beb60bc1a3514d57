"""Clustering models: how features become clusters. Each module of this
package defines one :class:`~clusterimg.clustering.base.Clusterer` subclass
(``graph``: a threshold on pair scores, chained with union-find; vector
models for backends with one vector per image)."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from clusterimg.clustering.base import Clusterer, Group, Groups

__all__ = ["Clusterer", "Group", "Groups", "available_clusterers", "get_clusterer"]


@lru_cache(maxsize=None)
def available_clusterers() -> dict[str, type[Clusterer]]:
    """Model name -> class, discovered from the modules of this package."""
    found: dict[str, type[Clusterer]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Clusterer) and obj.__module__ == module.__name__ \
                    and getattr(obj, "name", None):
                found[obj.name] = obj
    return dict(sorted(found.items()))


def get_clusterer(name: str, **options) -> Clusterer:
    """A configured clustering model; ValueError with a user-facing message if
    the name or an option is wrong."""
    models = available_clusterers()
    if name not in models:
        raise ValueError(f"unknown clustering model {name!r} (choose from {', '.join(models)})")
    return models[name](**options)
