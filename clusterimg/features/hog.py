"""Histograms of oriented gradients (Dalal & Triggs 2005) of a grey thumbnail.

The classical shape descriptor clustimage offers as its "hog" method: each
image is squashed to a ``size`` x ``size`` grey thumbnail (default 64), split
into 8 x 8 pixel cells, each cell a histogram of its gradient orientations
(``orientations`` unsigned bins), histograms normalised over 2 x 2 cell blocks
(L2-Hys), all concatenated: a float32 vector of 1,764 values at 64 px. It
beats raw pixels on small grey images (digits, clothing) because it ignores
brightness and tolerates small shifts; it knows nothing about what a photo
shows. scikit-image computes it (imported lazily).
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.features.base import Option, VectorMethod

CELL = 8  # pixels per cell side
BLOCK = 2  # cells per block side


class HOG(VectorMethod):
    name = "hog"
    summary = "histograms of oriented gradients of a grey thumbnail: shape, for small grey images"
    # Not calibrated (vector features are meant for the vector clustering models).
    default_threshold = 0.9
    decode_gray = True
    options = (
        Option("size", int, 64, "side of the grey thumbnail the gradients are taken on (a multiple of 8)"),
        Option("orientations", int, 9, "orientation bins per cell"),
    )

    def check_params(self) -> None:
        size = self.params["size"]
        if size < CELL * BLOCK or size > 512 or size % CELL:
            raise ValueError(f"--size must be a multiple of {CELL} between {CELL * BLOCK} and 512")
        if not 2 <= self.params["orientations"] <= 36:
            raise ValueError("--orientations must be between 2 and 36")
        self.decode_side = max(128, 2 * size)

    def extract(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import hog

        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        side = self.params["size"]
        thumb = cv2.resize(np.ascontiguousarray(image), (side, side), interpolation=cv2.INTER_AREA)
        return hog(thumb.astype(np.float32) / 255.0, orientations=self.params["orientations"],
                   pixels_per_cell=(CELL, CELL), cells_per_block=(BLOCK, BLOCK),
                   block_norm="L2-Hys", feature_vector=True).astype(np.float32)
