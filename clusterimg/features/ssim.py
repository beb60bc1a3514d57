"""Structural similarity (SSIM) of grayscale thumbnails of one fixed size.

Every image becomes a ``size`` x ``size`` grayscale thumbnail (squashed to a
square, so images of any size and aspect compare), and a pair scores the mean
SSIM of its two thumbnails (Wang et al. 2004: 11-tap gaussian window, sigma
1.5, K1 = 0.01, K2 = 0.03, data range 255), clipped to [0, 1]. The values agree
with ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)`` on the same
thumbnails; they are computed here for whole blocks of pairs at once, with the
per-image window means and variances computed once per search.

Good at resized, recompressed, recoloured, blurred and noisy copies; poor at
anything that moves the content (crops, borders, rotations).

Flat images (blank, one pixel, a uniform colour) have no structure: a flat
image scores 0 against any image with structure, however SSIM's stabilising
constants would rate it. Two flat images score SSIM's luminance term, which is
what the formula gives for them: 1 for the same grey level, falling towards 0
as the levels part (a folder's black lens-cap frames end up together).

Candidate search: each image's 16 x 16 thumbnail, local mean removed and local
contrast normalised, is a unit vector; the dot product of two says how alike
their local structure is. Each image proposes its ``candidates`` nearest
images, and only those pairs get the full SSIM (``--exhaustive``: all pairs).
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.features.base import Method, Option, candidates_option
from clusterimg.engine.search import top_k_pairs

K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
C1, C2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
SIGMA = 1.5
TRUNCATE = 3.5  # what skimage uses with gaussian weights: an 11-tap window
RADIUS = int(TRUNCATE * SIGMA + 0.5)
# A thumbnail whose grey levels vary less than this (standard deviation) is flat.
FLAT_STD = 1.0
DESCRIPTOR_SIDE = 16  # side of the tiny thumbnail that picks candidates
LCN_FLOOR = 4.0  # grey levels added to the local contrast of a descriptor
PAIR_BLOCK = 256  # pairs per vectorised step: bounds the temporary arrays


def gaussian_kernel(sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """The 1-D window scipy.ndimage.gaussian_filter (and so skimage) uses."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def thumbnail(gray: np.ndarray, side: int) -> np.ndarray:
    """A side x side uint8 thumbnail (area averaging; squashed to a square)."""
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    # INTER_AREA averages when shrinking (no aliasing) and interpolates when enlarging.
    return cv2.resize(np.ascontiguousarray(gray), (side, side), interpolation=cv2.INTER_AREA)


def window_means(stack: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """Gaussian-weighted means of (n, s, s) float32 images, interior only:
    (n, s - 2r, s - 2r), the positions whose whole window lies inside the
    image, which are the ones SSIM averages (skimage crops the same border).

    The images are filtered as one tall image in a single OpenCV call: an
    interior position never reaches past its own image, so the tiles cannot
    bleed into each other and the border mode does not matter.
    """
    n, h, w = stack.shape
    if n == 0:
        return np.zeros((0, h - 2 * radius, w - 2 * radius), np.float32)
    k = gaussian_kernel(SIGMA, radius)
    tall = np.ascontiguousarray(stack, dtype=np.float32).reshape(n * h, w)
    filtered = cv2.sepFilter2D(tall, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)
    return filtered.reshape(n, h, w)[:, radius : h - radius, radius : w - radius]


def ssim_maps_mean(mu_a, mu_b, var_a, var_b, cross) -> np.ndarray:
    """Mean SSIM per pair from window statistics, each (pairs, h, w)."""
    cov = cross - mu_a * mu_b
    num = (2 * mu_a * mu_b + C1) * (2 * cov + C2)
    den = (mu_a * mu_a + mu_b * mu_b + C1) * (var_a + var_b + C2)
    return (num / den).mean(axis=(1, 2), dtype=np.float64)


def unit_descriptors(thumbs: np.ndarray, side: int = DESCRIPTOR_SIDE) -> np.ndarray:
    """(n, side*side) unit-norm descriptors (flat images: all zero) whose dot
    product says how alike the local structure of two images is.

    Each is a tiny thumbnail with its local mean taken away and its local
    contrast divided out (sigma = side / 8): like SSIM, it looks at local
    structure, so a border or caption bar that shifts the global mean and
    contrast does not hide a copy, as a plain tiny-thumbnail correlation does.
    """
    if len(thumbs) == 0:
        return np.zeros((0, side * side), np.float32)
    sigma = side / 8
    rows = []
    for t in thumbs:
        tiny = cv2.resize(np.asarray(t, np.float32), (side, side), interpolation=cv2.INTER_AREA)
        detail = tiny - cv2.GaussianBlur(tiny, (0, 0), sigma)
        # + LCN_FLOOR: noise in near-flat regions must not be blown up to full contrast
        contrast = np.sqrt(cv2.GaussianBlur(detail * detail, (0, 0), sigma)) + LCN_FLOOR
        rows.append((detail / contrast).ravel())
    v = np.stack(rows)
    v -= v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    flat = np.array([np.ptp(t) < 2 * FLAT_STD for t in thumbs])[:, None]
    return np.divide(v, norm, out=np.zeros_like(v), where=(norm > 1e-6) & ~flat)


class SSIM(Method):
    name = "ssim"
    summary = "structural similarity of thumbnails: resized, recompressed, recoloured, blurred, noisy copies"
    default_threshold = 0.52  # F1-best on the dev benchmark (benchmarks/calibrate.py)
    options = (
        Option("size", int, 32, "ssim/tm: thumbnail side in pixels"),
        candidates_option(15),
    )
    decode_gray = True
    decode_side = 64  # for the default size; __init__ sets it from --size
    feature_version = 1

    def check_params(self) -> None:
        if not 2 * RADIUS + 8 <= self.params["size"] <= 512:
            raise ValueError(f"--size must be between {2 * RADIUS + 8} and 512 for ssim")
        # Decode at twice the thumbnail side, so that the short side of a
        # landscape or portrait photo is still shrunk (averaged), not enlarged.
        self.decode_side = 2 * self.params["size"]

    def extract(self, image: np.ndarray) -> np.ndarray:
        return thumbnail(image, self.params["size"])

    def stack(self, features):
        side = self.params["size"]
        thumbs = np.stack(features).astype(np.float32) if len(features) else np.zeros((0, side, side), np.float32)
        mu = window_means(thumbs)
        var = window_means(thumbs * thumbs) - mu * mu
        return {
            "thumbs": thumbs,
            "mu": mu,
            "var": var,
            "mean": thumbs.mean(axis=(1, 2)) if len(thumbs) else np.zeros(0, np.float32),
            "flat": thumbs.std(axis=(1, 2)) < FLAT_STD if len(thumbs) else np.zeros(0, bool),
            "descriptors": unit_descriptors(thumbs),
        }

    def score(self, stacked, i, j):
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        out = np.empty(len(i))
        for s in range(0, len(i), PAIR_BLOCK):
            a, b = i[s : s + PAIR_BLOCK], j[s : s + PAIR_BLOCK]
            cross = window_means(stacked["thumbs"][a] * stacked["thumbs"][b])
            out[s : s + len(a)] = ssim_maps_mean(stacked["mu"][a], stacked["mu"][b], stacked["var"][a],
                                                 stacked["var"][b], cross)
        return np.clip(flat_rule(out, stacked, i, j), 0.0, 1.0)

    def candidates(self, stacked, floor):
        d = stacked["descriptors"]
        return top_k_pairs(lambda a, b: d[a:b] @ d.T, len(d), self.params["candidates"])


def flat_rule(scores: np.ndarray, stacked: dict, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Flat vs structured scores 0; flat vs flat scores the luminance term."""
    fi, fj = stacked["flat"][i], stacked["flat"][j]
    mi, mj = stacked["mean"][i].astype(np.float64), stacked["mean"][j].astype(np.float64)
    luminance = (2 * mi * mj + C1) / (mi * mi + mj * mj + C1)
    return np.where(fi & fj, luminance, np.where(fi | fj, 0.0, scores))
