"""clusterimg: sort a folder of photos into clusters of alike images."""

__version__ = "0.1.0"
