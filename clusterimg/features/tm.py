"""Template matching: is one image's centre found inside the other?

Every image becomes a ``size`` x ``size`` grayscale thumbnail (squashed to a
square) and is high-pass filtered (see detail()). For a pair (a, b), the
centre 90 % of a's thumbnail, shrunk to ten scales, slides over b's
thumbnail, and the best normalised correlation of any scale and position counts (OpenCV's TM_CCOEFF_NORMED); then the same with the
roles swapped, and the better direction wins. Score = that correlation,
negative values clipped to 0, so 1 is a perfect match and a high score means
similar. (The original tool took the minimum of a squared-difference score and
then wanted it ABOVE the threshold, which inverts the meaning.)

Why scales below 1 only: a crop keeping a fraction ``keep`` of the original,
squashed to the same thumbnail size, shows its content enlarged by 1 / keep.
So the crop's centre is found in the original's thumbnail at scale ``keep``;
the other direction covers the pair with the roles swapped, and a border
(the original shrunk inside a frame) the same way. Scales go down to 0.55,
the strongest crop the benchmark's tiers call for (a 45 % cut).

Matching is computed for blocks of pairs at once in the frequency domain: per
search, each thumbnail's FFT, each image's zero-mean unit-norm templates'
FFTs and each image's sliding-window norms are computed once; a pair then
costs one complex product and one inverse FFT per scale and direction. The
results equal cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED).

Flat images (blank, one pixel, a uniform colour) have nothing to match: they
score 0 against any image with structure. Two flat images score the SSIM
luminance term of their grey levels (1 for the same level), as in ssim.

Candidate search: each image has a tiny descriptor of the whole image and of
sub-windows at the same scales and a grid of positions; a pair's candidate
score is the best match of one image's whole descriptor among the other's
windows (both ways). Each image proposes its ``candidates`` best partners.
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.features.base import Method, Option, candidates_option
from clusterimg.features.ssim import FLAT_STD, flat_rule, thumbnail
from clusterimg.engine.search import top_k_pairs

# Scales at which the centre of one thumbnail is searched in the other: a
# geometric ladder (steps of about 6.5 %) from 1 down to 0.55, the strongest
# crop handled. Ten steps rather than six: borders and crops between two
# steps lost up to 0.2 of their correlation (dev F1 0.79 -> 0.80 exhaustive).
SCALES = (1.0, 0.935, 0.875, 0.82, 0.765, 0.715, 0.67, 0.625, 0.585, 0.55)
# Coarser ladder for the candidate descriptors (8 px, so tolerant anyway).
WINDOW_SCALES = (0.89, 0.79, 0.7, 0.62, 0.55)
CENTRE = 0.9  # side of the template, as a fraction of the thumbnail side
# Blur (sigma, as a fraction of the thumbnail side) whose result is subtracted
# before matching; 4.5 px at the default 48 px side. Calibrated on dev.
HIGHPASS_SIGMA = 0.09375
NORM_FLOOR = 1e-3  # windows (and templates) with less spread than this are flat
PAIR_BLOCK = 128  # pairs per vectorised step: bounds the temporary arrays
DESCRIPTOR_SIDE = 8  # side of the tiny descriptors that pick candidates
WINDOW_POSITIONS = 3  # window positions per axis in the candidate descriptors
# Template spectra cost ~94 KB an image. A search over at most this many images
# keeps them all (fast); a bigger one (the merge stage of a large folder, where
# nearly every image is a representative) computes them per block of pairs, so
# memory stays flat as the folder grows.
KEEP_TEMPLATES_MAX = 4000
SPECTRA_CHUNK = 256  # images transformed at a time: bounds the float64 temporaries


def template_spectra(thumbs: np.ndarray) -> np.ndarray:
    """conj(FFT) of each thumbnail's zero-padded centre templates at every
    scale, (n, scales, side, side//2 + 1) complex64: correlation is a product."""
    n, side = len(thumbs), thumbs.shape[1] if len(thumbs) else 0
    out = np.empty((n, len(SCALES), side, side // 2 + 1), np.complex64)
    sides = template_sides(side) if n else []
    for start in range(0, n, SPECTRA_CHUNK):
        chunk = thumbs[start : start + SPECTRA_CHUNK]
        padded = np.zeros((len(chunk), len(SCALES), side, side), np.float32)
        for m, thumb in enumerate(chunk):
            for k, t in enumerate(sides):
                padded[m, k, :t, :t] = zero_mean_unit(centre_template(thumb, SCALES[k]))
        out[start : start + len(chunk)] = np.conj(np.fft.rfft2(padded))
    return out


def centre_template(thumb: np.ndarray, scale: float, fraction: float | None = None) -> np.ndarray:
    """The centre ``fraction`` of a square thumbnail, resized by ``scale``."""
    side = thumb.shape[0]
    fraction = CENTRE if fraction is None else fraction
    crop = max(1, int(round(side * fraction)))
    start = (side - crop) // 2
    out = max(1, int(round(crop * scale)))
    centre = thumb[start : start + crop, start : start + crop]
    return cv2.resize(centre, (out, out), interpolation=cv2.INTER_AREA)


def zero_mean_unit(template: np.ndarray) -> np.ndarray:
    """Template minus its mean, divided by its norm (all zero if flat)."""
    t = template.astype(np.float64) - template.mean()
    norm = np.sqrt((t * t).sum())
    return (t / norm).astype(np.float32) if norm > NORM_FLOOR else np.zeros_like(t, np.float32)


def window_norms(image: np.ndarray, win: int) -> np.ndarray:
    """sqrt(sum (x - window mean)^2) over every win x win window that fits:
    the image side of TM_CCOEFF_NORMED's denominator, (s-win+1, s-win+1)."""
    x = image.astype(np.float64)
    s1 = cv2.integral(x)
    s2 = cv2.integral(x * x)

    def box(s):
        return s[win:, win:] - s[:-win, win:] - s[win:, :-win] + s[:-win, :-win]

    total, total_sq = box(s1), box(s2)
    return np.sqrt(np.maximum(total_sq - total * total / (win * win), 0.0)).astype(np.float32)


def template_sides(side: int) -> list[int]:
    return [centre_template(np.zeros((side, side), np.float32), r).shape[0] for r in SCALES]


def detail(thumb: np.ndarray) -> np.ndarray:
    """The thumbnail minus a blurred copy of itself (a high-pass filter).

    Why: normalised correlation of raw thumbnails is high for any two photos
    that share a smooth layout (bright sky above, dark ground below); on the
    benchmark unrelated pairs reached 0.95. Matching the detail that is left
    after taking the broad shading away separates copies from look-alikes
    (dev pairwise F1 0.71 raw -> 0.79 high-pass, exhaustive search).
    """
    sigma = HIGHPASS_SIGMA * thumb.shape[0]
    return thumb - cv2.GaussianBlur(thumb, (0, 0), sigma)


def window_descriptors(thumb: np.ndarray, side: int = DESCRIPTOR_SIDE) -> np.ndarray:
    """(windows, side*side) unit descriptors: the whole thumbnail first, then
    square windows of each scale at a grid of positions, each shrunk to
    side x side, zero mean and unit norm (flat windows: all zero)."""
    s = thumb.shape[0]
    rows = [thumb]
    for r in WINDOW_SCALES:
        win = max(1, int(round(s * r)))
        offsets = np.unique(np.round(np.linspace(0, s - win, WINDOW_POSITIONS)).astype(int))
        rows += [thumb[y : y + win, x : x + win] for y in offsets for x in offsets]
    out = np.stack([cv2.resize(w, (side, side), interpolation=cv2.INTER_AREA).ravel() for w in rows])
    out = out - out.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > NORM_FLOOR * side).astype(np.float32)


class TM(Method):
    name = "tm"
    summary = "template matching of thumbnails: cropped, bordered, resized copies"
    default_threshold = 0.77  # F1-best on the dev benchmark (benchmarks/calibrate.py)
    options = (
        Option("size", int, 48, "ssim/tm: thumbnail side in pixels"),
        candidates_option(15),
    )
    decode_gray = True
    decode_side = 96  # for the default size; check_params sets it from --size
    feature_version = 1

    def check_params(self) -> None:
        if not 16 <= self.params["size"] <= 256:
            raise ValueError("--size must be between 16 and 256 for tm")
        # Decode at twice the thumbnail side, so that both sides are shrunk.
        self.decode_side = 2 * self.params["size"]

    def extract(self, image: np.ndarray) -> np.ndarray:
        return thumbnail(image, self.params["size"])

    def stack(self, features):
        side = self.params["size"]
        raw = np.stack(features).astype(np.float32) if len(features) else np.zeros((0, side, side), np.float32)
        thumbs = np.stack([detail(x) for x in raw]) if len(raw) else raw
        n = len(thumbs)
        sides = template_sides(side)
        spectra = np.empty((n, side, side // 2 + 1), np.complex64)
        for start in range(0, n, SPECTRA_CHUNK):
            spectra[start : start + SPECTRA_CHUNK] = np.fft.rfft2(thumbs[start : start + SPECTRA_CHUNK])
        return {
            "thumbs": thumbs,
            "spectra": spectra,
            "templates": template_spectra(thumbs) if n <= KEEP_TEMPLATES_MAX else None,
            "norms": [np.stack([window_norms(x, t) for x in thumbs]) if n else
                      np.zeros((0, side - t + 1, side - t + 1), np.float32) for t in sides],
            "sides": np.asarray(sides),
            "mean": raw.mean(axis=(1, 2)) if n else np.zeros(0, np.float32),
            "flat": raw.std(axis=(1, 2)) < FLAT_STD if n else np.zeros(0, bool),
            "descriptors": np.stack([window_descriptors(x) for x in thumbs]) if n else
            np.zeros((0, 1, DESCRIPTOR_SIDE ** 2), np.float32),
        }

    def score(self, stacked, i, j):
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        out = np.empty(len(i))
        for s in range(0, len(i), PAIR_BLOCK):
            a, b = i[s : s + PAIR_BLOCK], j[s : s + PAIR_BLOCK]
            out[s : s + len(a)] = np.maximum(best_match(stacked, a, b), best_match(stacked, b, a))
        return np.clip(flat_rule(out, stacked, i, j), 0.0, 1.0)

    def candidates(self, stacked, floor):
        d = stacked["descriptors"]  # (n, windows, dim)
        n = len(d)
        whole = d[:, 0, :]
        windows = d.reshape(-1, d.shape[-1])

        def rows(start, stop):
            # best window of every image for the whole of images start..stop-1,
            # and the other way round: the whole of every image in their windows
            inside_others = (whole[start:stop] @ windows.T).reshape(stop - start, n, -1).max(axis=2)
            others_inside = (d[start:stop] @ whole.T).max(axis=1)
            return np.maximum(inside_others, others_inside)

        return top_k_pairs(rows, n, self.params["candidates"], block=64)


def best_match(stacked: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Best TM_CCOEFF_NORMED of a's centre templates (all scales) inside b."""
    side = stacked["spectra"].shape[1]
    if stacked["templates"] is not None:
        templates = stacked["templates"][a]
    else:
        unique, where = np.unique(a, return_inverse=True)
        templates = template_spectra(stacked["thumbs"][unique])[where]
    product = templates * stacked["spectra"][b][:, None]  # (pairs, scales, side, side//2+1)
    corr = np.fft.irfft2(product, s=(side, side))
    best = np.full(len(a), -1.0)
    for k, t in enumerate(stacked["sides"]):
        valid = side - t + 1
        norm = stacked["norms"][k][b]
        c = corr[:, k, :valid, :valid]
        # a window too flat to correlate with counts as no match, not a division by ~0
        r = np.where(norm > NORM_FLOOR * t, c / np.maximum(norm, 1e-12), -1.0)
        best = np.maximum(best, r.reshape(len(a), -1).max(axis=1))
    return best

