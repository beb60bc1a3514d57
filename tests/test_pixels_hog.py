"""pixels and hog: vector backends whose features are what their docs say."""
from __future__ import annotations

import numpy as np
import pytest

from clusterimg.features import available, get_method
from tests.conftest import make_photo, write_photo


def test_registered_as_vector_backends():
    for name in ("pixels", "hog"):
        assert name in available()
        assert get_method(name).kind == "vector"


def test_pixels_is_the_thumbnail(tmp_path):
    # A 2x2 block image: left half black, right half white. At size 2 the
    # gray vector is exactly [0, 1, 0, 1]; in RGB each value three times.
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 255
    gray = get_method("pixels", size=2, color="gray")
    assert np.allclose(gray.extract(img), [0, 1, 0, 1])
    rgb = get_method("pixels", size=2)
    assert np.allclose(rgb.extract(img), [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    assert rgb.extract(img).dtype == np.float32
    # Through the decoder, on a file: 32 x 32 x 3 values in [0, 1].
    path = write_photo(tmp_path / "a.png", make_photo(1))
    f = get_method("pixels").feature(path)
    assert f.shape == (3072,) and 0 <= f.min() <= f.max() <= 1


def test_hog_sees_shape_not_brightness(tmp_path):
    hog = get_method("hog")
    vertical = np.zeros((64, 64), np.uint8)
    vertical[:, 32:] = 200
    horizontal = vertical.T.copy()
    a = hog.extract(vertical)
    assert a.shape == (1764,) and a.dtype == np.float32  # 7 x 7 blocks x 2 x 2 cells x 9 bins
    stack = hog.stack([a, hog.extract(np.clip(vertical.astype(int) // 2 + 20, 0, 255).astype(np.uint8)),
                       hog.extract(horizontal)])
    same_edge_dimmer, turned = hog.score(stack, np.array([0, 0]), np.array([1, 2]))
    assert same_edge_dimmer > 0.99  # the same edge at another brightness
    assert turned < 0.5  # the edge turned by 90 degrees


def test_options_are_checked():
    with pytest.raises(ValueError, match="--size"):
        get_method("hog", size=30)
    with pytest.raises(ValueError, match="--color"):
        get_method("pixels", color="cmyk")
    with pytest.raises(ValueError, match="--size"):
        get_method("pixels", size=1)


def test_vectors_of_a_folder_are_stacked(tmp_path):
    m = get_method("pixels", size=8, color="gray")
    feats = [m.feature(write_photo(tmp_path / f"{i}.png", make_photo(i))) for i in range(3)]
    X = m.vectors(feats)
    assert X.shape == (3, 64) and X.dtype == np.float32
