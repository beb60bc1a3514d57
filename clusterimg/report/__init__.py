"""A static HTML report of a clustering: ``build_report(out_dir)`` writes
``OUT/report.html`` and its thumbnails (works offline, from file://)."""
from clusterimg.report.html import build_report

__all__ = ["build_report"]
