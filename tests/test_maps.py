"""maps.py: the two PNGs are written, and a missing matplotlib is one line."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from clusterimg.clustering.selection import select
from clusterimg.errors import ClusterimgError
from clusterimg.maps import plot_map, plot_selection
from tests.test_vector_clustering import blobs_on_sphere


def test_map_and_selection_pngs(tmp_path):
    X, _ = blobs_on_sphere(k=3, per=8, d=12)
    s = select(X, models=["kmeans", "agglomerative"], k_max=5)
    thumbs = [np.full((20, 30, 3), 10 * i, np.uint8) for i in range(len(X))]
    for path in (plot_map(tmp_path / "map.png", X, s.labels, thumbs=thumbs),
                 plot_selection(tmp_path / "selection.png", s.table, s.chosen)):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 500


def test_missing_matplotlib_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ClusterimgError) as e:
        plot_selection(tmp_path / "s.png", [], {})
    assert e.value.exit_code == 2 and "matplotlib" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s.png").exists()
