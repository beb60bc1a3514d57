"""Raw pixels: the image squashed to a small square, flattened.

The seed's baseline for clustering by content (the Azure ML Studio write-up
and clustimage's "pca" method cluster such vectors): cheap, and weak for
anything but small, centred, aligned images. Each image is resized to
``size`` x ``size`` (area averaging, aspect ratio ignored, alpha composited
onto white by the decoder) in RGB or grayscale, scaled to [0, 1] and
flattened to a float32 vector of size*size*3 (or size*size) values.
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.features.base import Option, VectorMethod


class Pixels(VectorMethod):
    name = "pixels"
    summary = "raw pixels of a small thumbnail as a vector: the baseline for clustering by content"
    # Cosine of non-negative pixel vectors is high for almost any pair, so only
    # very close thumbnails pass (not calibrated: vector features are meant for
    # the vector clustering models, not the pair threshold).
    default_threshold = 0.98
    options = (
        Option("size", int, 32, "side of the square thumbnail whose pixels are the vector"),
        Option("color", str, "rgb", "rgb: three channels; gray: one", choices=("rgb", "gray")),
    )

    def check_params(self) -> None:
        if not 2 <= self.params["size"] <= 256:
            raise ValueError("--size must be between 2 and 256")
        self.decode_gray = self.params["color"] == "gray"
        # Decode a little above the thumbnail so the area averaging has pixels to average.
        self.decode_side = max(64, 4 * self.params["size"])

    def extract(self, image: np.ndarray) -> np.ndarray:
        side = self.params["size"]
        if self.decode_gray and image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        elif not self.decode_gray and image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        thumb = cv2.resize(np.ascontiguousarray(image), (side, side), interpolation=cv2.INTER_AREA)
        return (thumb.astype(np.float32) / 255.0).ravel()
