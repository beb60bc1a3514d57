"""Finding image files and decoding them: the one decoder every backend uses.

A real photo dump is messy, so decoding normalises everything to an 8-bit RGB
or grayscale numpy array: EXIF orientation applied, CMYK / palette / 16-bit /
alpha images converted (alpha composited onto white), the first frame of
animations and multi-page files, JPEGs decoded at reduced size when only a
thumbnail is needed, and decompression bombs refused before any allocation.
"""
from __future__ import annotations

import errno
import fnmatch
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from clusterimg.errors import ImageReadError
from clusterimg.formats import EXTENSIONS as _PHONE_AND_CAMERA_EXTENSIONS
from clusterimg.formats import extension, open_special, register_opener, sniffed_extension

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
) | _PHONE_AND_CAMERA_EXTENSIONS  # HEIC/HEIF, AVIF, camera RAW: clusterimg/formats.py

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


# A folder holding one of these is a clusterimg output (or an interrupted one):
# its files are copies or moved originals of an earlier run, not new input.
OUTPUT_MARKERS = ("clusters.json", ".clusterimg-pending.json")
OUTPUT_FOLDER_REASON = "a clusterimg output folder (holds its clusters.json or journal): not read again"


def is_output_folder(names: set[str], folder: Path) -> bool:
    """Whether a folder whose entry names are ``names`` is a clusterimg output."""
    if OUTPUT_MARKERS[1] in names:
        return True
    if OUTPUT_MARKERS[0] in names:
        try:
            with open(folder / OUTPUT_MARKERS[0], "rb") as f:
                return b'"clusterimg"' in f.read(200)  # the manifest's first key
        except OSError:
            return False
    return False


def matches_any(rel_path: str, name: str, patterns: Sequence[str]) -> str | None:
    """The first glob of ``patterns`` matching the relative path or the name."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel_path, pattern) or fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def link_problem(path: str) -> str:
    """Why a symbolic link that is not a file cannot be read, in words."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        if e.errno == errno.ENOENT:
            try:
                return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
            except OSError:
                return "broken symbolic link"
        return f"symbolic link that cannot be followed: {e.strerror or e}"
    if os.path.isdir(path):
        return "symbolic link to a folder (links to folders are not followed)"
    return "symbolic link to something that is not a regular file"


def discover(root: Path, recursive: bool = True, exclude: Path | None = None,
             exclude_globs: Sequence[str] = ()) -> tuple[list[str], list[Skipped]]:
    """Image files under ``root`` as sorted relative paths, and the files passed over.

    Hidden files and AppleDouble ``._*`` files are not read but listed as skipped,
    so every file of the folder is accounted for; hidden folders are not entered.
    ``exclude`` is a folder to leave out entirely; ``exclude_globs`` are
    patterns matched against each relative path (with ``/``) and each name
    (files and folders matching one are listed as skipped, folders not
    entered). A subfolder holding a clusterimg manifest or journal is an
    earlier output: it is listed once as skipped and not entered. Symlinked
    folders are not followed (no loops). Names that are not valid UTF-8
    come back with surrogate escapes (``os.fsdecode``).
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
        if rel and is_output_folder({e.name for e in entries}, folder):
            skipped.append(Skipped(rel.rstrip("/"), OUTPUT_FOLDER_REASON))
            return
        for entry in entries:
            rel_path = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            pattern = matches_any(rel_path, entry.name, exclude_globs) if exclude_globs else None
            if is_dir:
                if entry.name.startswith(".") or not recursive:
                    continue
                if exclude_resolved is not None and Path(entry.path).resolve() == exclude_resolved:
                    continue
                if pattern is not None:
                    skipped.append(Skipped(rel_path, f"excluded by --exclude {pattern}"))
                    continue
                walk(Path(entry.path), rel_path + "/")
            elif pattern is not None:
                skipped.append(Skipped(rel_path, f"excluded by --exclude {pattern}"))
            elif not is_file:
                if entry.is_symlink():
                    skipped.append(Skipped(rel_path, link_problem(entry.path)))
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
        return np.asarray(im if im.mode == "L" else im.convert("L"))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def draft_size(w: int, h: int, max_side: int | None, min_side: int | None, reduce_only: bool) -> tuple[int, int]:
    """The smallest size a w x h JPEG may be decoded at: both sides at least
    ``min_side``, and at least ``max_side`` (both sides when ``reduce_only``,
    since the backend makes its own thumbnail from it; else the longest
    side, since the image is then resized to exactly that)."""
    lower = max(min_side or 0, max_side or 0 if reduce_only else 0)
    scale = (max_side or 0) / max(w, h)
    return max(lower, math.ceil(w * scale)), max(lower, math.ceil(h * scale))


_REDUCED_FLAGS = {
    (1, True): cv2.IMREAD_GRAYSCALE, (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4, (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8,
    (1, False): cv2.IMREAD_COLOR, (2, False): cv2.IMREAD_REDUCED_COLOR_2,
    (4, False): cv2.IMREAD_REDUCED_COLOR_4, (8, False): cv2.IMREAD_REDUCED_COLOR_8,
}
JPEG_END = b"\xff\xd9"
JPEG_EXTENSIONS = frozenset((".jpg", ".jpeg", ".jpe", ".jfif"))
MAX_JPEG_BYTES = 256 * 1024 * 1024  # read whole into memory only below this


def _file_bytes(path) -> io.BytesIO | str | os.PathLike:
    """The file's bytes, or the path itself when they cannot be read (the
    decoder then gives the reason) or the file is larger than any sane JPEG
    (Pillow then reads its header from the file and refuses it if need be)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_JPEG_BYTES:
                return path
            return io.BytesIO(f.read())
    except OSError:
        return path


def _reduced_jpeg(source, im: Image.Image, size: tuple[int, int], gray: bool) -> np.ndarray | None:
    """The JPEG that Pillow opened as ``im``, decoded by OpenCV at the scale
    Pillow's draft(size) would pick, or None to let Pillow decode it.

    The same libjpeg DCT scaling and colour conversion as Pillow's draft,
    and the same EXIF orientation, so the same pixels (a test compares them);
    without Pillow's chunked feeding of the decoder it costs about 20 %
    less, most of phash's time per image. Only plain YCbCr or gray JPEGs
    that end with their end-of-image marker, given as bytes: truncated or
    CMYK files and other file objects go the Pillow way."""
    if im.mode not in ("L", "RGB") or len(getattr(im, "tile", ())) != 1:
        return None
    if not isinstance(source, io.BytesIO):
        return None
    data = source.getbuffer()
    if bytes(data[-2:]) != JPEG_END:
        return None
    w, h = im.size
    most = min(w // size[0], h // size[1])
    scale = next((s for s in (8, 4, 2) if most >= s), 1)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[scale, gray])
    if arr is None:
        return None
    return arr if gray else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def load_image(path: str | os.PathLike, max_side: int | None = None, gray: bool = False,
               min_side: int | None = None, *, reduce_only: bool = False) -> np.ndarray:
    """Decode ``path`` (a file name, or a binary file object such as
    :func:`image_bytes` gives) into a uint8 array, longest side at most ``max_side``.

    ``min_side`` (for backends that resize the image themselves) only lets a
    JPEG be decoded at reduced size while both sides stay at least that long.

    ``reduce_only``: ``max_side`` only steers the decoder's own cheap
    reduction (a JPEG decoded at 1/2, 1/4 or 1/8 size, never below
    ``max_side``) and the image is not resized after it: for a backend that
    resizes to its own small thumbnail anyway, one resize instead of two.

    Raises ImageReadError with a one-line reason for anything that is not a
    readable image.
    """
    source = path
    if (max_side or min_side) and isinstance(path, (str, os.PathLike)) and extension(path) in JPEG_EXTENSIONS:
        source = _file_bytes(path)  # read once, for Pillow's header and OpenCV's decoder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are noise here
            # HEIC/AVIF: registers the opener; camera RAW: decoded there (None otherwise)
            with open_special(path, max_side, MAX_PIXELS) or Image.open(source) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageReadError(f"image too large ({w}x{h} pixels, limit {MAX_PIXELS:,})")
                if w < 1 or h < 1:
                    raise ImageReadError("image has no pixels")
                arr = None
                if im.format == "JPEG" and (max_side or min_side):
                    # DCT scaling: decode at 1/2, 1/4 or 1/8 size, no smaller than draft_size.
                    size = draft_size(w, h, max_side, min_side, reduce_only)
                    arr = _reduced_jpeg(source, im, size, gray)
                    if arr is None:
                        im.draft("L" if gray else "RGB", size)
                if arr is None:
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
    return fit_within(arr, max_side) if max_side and not reduce_only else arr


def fit_within(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the longest side is at most ``max_side``."""
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
def image_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> io.BytesIO:
    """An image received as bytes (an upload), checked from its header
    before any decoding: ImageReadError if it is empty, not an image, or has
    more than ``max_pixels`` pixels. Pass the result to :func:`load_image`
    (or a backend's ``decode``), which decodes it like a file."""
    if not data:
        raise ImageReadError("empty file")
    register_opener(sniffed_extension(io.BytesIO(data[:12])))  # an uploaded HEIC or AVIF has no file name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise ImageReadError(f"image too large (over {MAX_PIXELS:,} pixels: possible decompression bomb)")
    except UnidentifiedImageError:
        raise ImageReadError("cannot identify image file (not an image, or an unsupported format)")
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError) as e:
        raise ImageReadError(f"cannot decode image: {_one_line(e)}")
    if w * h > max_pixels:
        raise ImageReadError(f"image too large ({w}x{h} pixels, limit {max_pixels:,})")
    return io.BytesIO(data)


def _size_or_none(path) -> int | None:
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
