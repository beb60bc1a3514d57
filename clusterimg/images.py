"""Finding image files and decoding them: the one decoder every backend uses.

A real photo dump is messy, so decoding normalises everything to an 8-bit RGB
or grayscale numpy array: EXIF orientation applied, CMYK / palette / 16-bit /
alpha images converted (alpha composited onto white), the first frame of
animations and multi-page files, JPEGs decoded at reduced size when only a
thumbnail is needed, and decompression bombs refused before any allocation.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from clusterimg.errors import ImageReadError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)

# Refuse images above this many pixels before decoding them (a 16-bit 200 MP
# image already needs 1.2 GB). Pillow's own guard is set to the same number.
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A truncated JPEG or PNG decodes as far as its data goes (the rest is grey)
# instead of failing: a partly damaged photo can still match its copies.
ImageFile.LOAD_TRUNCATED_IMAGES = True


@dataclass(frozen=True)
class Skipped:
    path: str  # relative to the input folder, with '/' separators
    reason: str


def discover(root: Path, recursive: bool = True, exclude: Path | None = None) -> tuple[list[str], list[Skipped]]:
    """Image files under ``root`` as sorted relative paths, and the files passed over.

    Hidden files and AppleDouble ``._*`` files are not read but listed as skipped,
    so every file of the folder is accounted for; hidden folders are not entered.
    ``exclude`` is a folder to leave out entirely (the output folder, when it
    lies inside the input). Symlinked folders are not followed (no loops).
    """
    found: list[str] = []
    skipped: list[Skipped] = []
    exclude_resolved = exclude.resolve() if exclude is not None else None

    def walk(folder: Path, rel: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(rel or ".", f"cannot list folder: {e.strerror or e}"))
            return
        for entry in entries:
            rel_path = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            if is_dir:
                if entry.name.startswith(".") or not recursive:
                    continue
                if exclude_resolved is not None and Path(entry.path).resolve() == exclude_resolved:
                    continue
                walk(Path(entry.path), rel_path + "/")
            elif not is_file:
                if entry.is_symlink():
                    skipped.append(Skipped(rel_path, "broken symbolic link"))
                continue
            elif entry.name.startswith("._"):
                skipped.append(Skipped(rel_path, "AppleDouble resource file (not an image)"))
            elif entry.name.startswith("."):
                skipped.append(Skipped(rel_path, "hidden file"))
            elif Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(rel_path, "not an image file (by its extension)"))
            else:
                found.append(rel_path)

    walk(root, "")
    return found, skipped


def _to_array(im: Image.Image, gray: bool) -> np.ndarray:
    """Any Pillow mode to uint8 RGB (H, W, 3) or gray (H, W); alpha onto white."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit integer or float samples: scale the format's range to 0-255
        a = np.asarray(im, dtype=np.float32)
        peak = float(a.max(initial=0))
        if mode == "F":
            top = 1.0 if peak <= 1.0 else peak
        else:
            top = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        g = np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return g if gray else np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im).convert("RGB")
    if gray:
        return np.asarray(im.convert("L"))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def load_image(path: str | os.PathLike, max_side: int | None = None, gray: bool = False,
               min_side: int | None = None) -> np.ndarray:
    """Decode ``path`` into a uint8 array, longest side at most ``max_side``.

    ``min_side`` (for backends that resize the image themselves) only lets a
    JPEG be decoded at reduced size while both sides stay at least that long.

    Raises ImageReadError with a one-line reason for anything that is not a
    readable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are noise here
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageReadError(f"image too large ({w}x{h} pixels, limit {MAX_PIXELS:,})")
                if w < 1 or h < 1:
                    raise ImageReadError("image has no pixels")
                draft_side = max(max_side or 0, min_side or 0)
                if draft_side and im.format == "JPEG":
                    # DCT scaling: decode at 1/2, 1/4 or 1/8 size, both sides never below draft_side.
                    im.draft("L" if gray else "RGB", (draft_side, draft_side))
                im.load()
                im = ImageOps.exif_transpose(im)
                arr = _to_array(im, gray)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError(f"image too large (over {MAX_PIXELS:,} pixels: possible decompression bomb)")
    except UnidentifiedImageError:
        size = _size_or_none(path)
        raise ImageReadError("empty file" if size == 0 else "cannot identify image file (not an image, or an unsupported format)")
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError) as e:
        raise ImageReadError(f"cannot decode image: {_one_line(e)}")
    return fit_within(arr, max_side) if max_side else arr


def fit_within(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the longest side is at most ``max_side``."""
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
def _size_or_none(path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
