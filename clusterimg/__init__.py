"""clusterimg: sort a folder of images into clusters of alike images.

The public Python API (everything else is private and may change)::

    import clusterimg
    result = clusterimg.cluster("photos/", method="orb", threshold=0.6)
    for c in result.clusters:
        print(c.representative, len(c.members))
    result.write("out/", transfer="symlink")
    text = result.to_json()

- :func:`cluster` runs the whole pipeline and returns a :class:`Result`
  (:class:`Cluster` objects, outliers, skipped files with reasons);
- :func:`methods` and :func:`clustering_models` list the feature backends
  and clustering models with their options;
- :class:`ClusterimgError` is raised for fatal problems (a missing input, a
  refused output folder), with a one-line message and an ``exit_code``.
"""
__version__ = "0.3.0"

from clusterimg.api import cluster, clustering_models, methods  # noqa: E402
from clusterimg.errors import ClusterimgError  # noqa: E402
from clusterimg.result import Cluster, Result  # noqa: E402

__all__ = ["__version__", "cluster", "methods", "clustering_models", "Result", "Cluster", "ClusterimgError"]
