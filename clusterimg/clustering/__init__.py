"""Clustering models: how features become clusters. Each module of this
package defines one :class:`~clusterimg.clustering.base.Clusterer` subclass
(``graph``: a threshold on pair scores, chained with union-find; vector
models for backends with one vector per image)."""
from __future__ import annotations

from functools import lru_cache

from clusterimg.clustering.base import Clusterer, Group, Groups
from clusterimg.options import discover_plugins

__all__ = ["Clusterer", "Group", "Groups", "available_clusterers", "get_clusterer"]


@lru_cache(maxsize=None)
def available_clusterers() -> dict[str, type[Clusterer]]:
    """Model name -> class, discovered from the modules of this package."""
    return discover_plugins(__name__, __path__, Clusterer)


def get_clusterer(name: str, **options) -> Clusterer:
    """A configured clustering model; ValueError with a user-facing message if
    the name or an option is wrong."""
    models = available_clusterers()
    if name not in models:
        raise ValueError(f"unknown clustering model {name!r} (choose from {', '.join(models)})")
    return models[name](**options)
