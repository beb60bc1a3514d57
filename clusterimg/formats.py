"""Phone and camera formats that Pillow does not read by itself: HEIC/HEIF
(pillow-heif), AVIF (Pillow's own support, else a plug-in) and camera RAW
(rawpy).

``images.load_image`` calls :func:`open_special` first; it dispatches by
extension. For HEIF and AVIF it makes sure Pillow can open the file (the
plug-in is imported and registered the first time such a file is met, so
start-up stays fast); the ordinary Pillow path then decodes it, EXIF
orientation included (a HEIF file is handed back opened, set to decode its
embedded thumbnail when that is large enough). A RAW file is decoded here into an
upright Pillow image: the embedded JPEG preview when it is at least as large
as the decode needs (fast), else a demosaic (at half size when that is still
large enough). A missing optional package makes that file a skipped one,
with a reason naming the package to install.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from clusterimg.errors import ImageReadError

HEIF_EXTENSIONS = frozenset(".heic .heif .hif".split())
AVIF_EXTENSIONS = frozenset([".avif"])
RAW_EXTENSIONS = frozenset(".cr2 .cr3 .nef .arw .dng .raf .orf .rw2".split())
EXTENSIONS = HEIF_EXTENSIONS | AVIF_EXTENSIONS | RAW_EXTENSIONS

# Per process: None = not tried yet, else the reason it failed ("" = ready).
_heif_state: str | None = None
_avif_state: str | None = None


def extension(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return ""  # a file object (an upload): decoded by Pillow's own openers
    name = os.fsdecode(os.fspath(path))
    return os.path.splitext(name)[1].lower()


# ISO base media "ftyp" brands (bytes 8-12 of the file): still-image HEIF and AVIF.
HEIF_BRANDS = frozenset([b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"])
AVIF_BRANDS = frozenset([b"avif", b"avis"])


def sniffed_extension(source) -> str:
    """For a file object without a name (an upload): ".heic" or ".avif" when
    its first bytes say so, so the plug-in is registered as for a file; else ""."""
    if not hasattr(source, "read") or not hasattr(source, "seek"):
        return ""
    try:
        at = source.tell()
        head = source.read(12)
        source.seek(at)
    except (OSError, ValueError):
        return ""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return ""
    # mif1 files name their real kind among the compatible brands; "avif"
    # first wins, as AVIF files also carry mif1.
    if head[8:12] in AVIF_BRANDS:
        return ".avif"
    return ".heic" if head[8:12] in HEIF_BRANDS else ""


def open_special(path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None
                 ) -> Image.Image | None:
    """A decoded, upright image for RAW files; an opened HEIF file set to
    decode its thumbnail where that is enough; None for every other file
    (after registering the HEIF or AVIF opener when the file needs one).
    Raises ImageReadError with a one-line reason."""
    ext = extension(path) or sniffed_extension(path)
    register_opener(ext)
    if ext in HEIF_EXTENSIONS and max_side:
        return _open_heif_thumbnail(path, max_side)
    if ext in RAW_EXTENSIONS:
        return decode_raw(path, max_side, max_pixels)
    return None


def register_opener(ext: str) -> None:
    """Make Pillow able to open a file of extension ``ext`` (HEIF, AVIF);
    ImageReadError naming the package to install when it cannot."""
    if ext in HEIF_EXTENSIONS:
        _require(_register_heif())
    elif ext in AVIF_EXTENSIONS:
        _require(_register_avif())


def _require(reason: str) -> None:
    if reason:
        raise ImageReadError(reason)


def _register_heif() -> str:
    global _heif_state
    if _heif_state is None:
        try:
            import pillow_heif
        except ImportError:
            _heif_state = "HEIC/HEIF file: install pillow-heif to read it (pip install pillow-heif)"
        else:
            pillow_heif.register_heif_opener()
            _heif_state = ""
    return _heif_state


def _open_heif_thumbnail(path, max_side: int) -> Image.Image | None:
    """The HEIF file opened for decoding at ``max_side``: phones embed a
    small thumbnail (an iPhone's is 320 x 240), and pillow-heif's ``draft``
    decodes that instead of the full image when it is a scaled copy at
    least as large as the image fitted within ``max_side``; else the full image."""
    im = Image.open(path)
    w, h = im.size
    scale = min(1.0, max_side / max(w, h, 1))
    try:
        im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    except Exception:  # a plug-in without thumbnail support: decode the full image
        pass
    return im


def _register_avif() -> str:
    """Pillow >= 11.3 reads AVIF itself where built with libavif; else the
    pillow-avif-plugin, else an older pillow-heif that still reads AVIF."""
    global _avif_state
    if _avif_state is None:
        _avif_state = "AVIF file: this Pillow cannot read AVIF; install pillow-avif-plugin to read it " \
                      "(pip install pillow-avif-plugin)"
        from PIL import features
        if features.check("avif"):
            _avif_state = ""
        else:
            try:
                import pillow_avif  # noqa: F401  (registers itself)
                _avif_state = ""
            except ImportError:
                try:
                    import pillow_heif
                    if hasattr(pillow_heif, "register_avif_opener"):
                        pillow_heif.register_avif_opener()
                        _avif_state = ""
                except ImportError:
                    pass
    return _avif_state


# -- camera RAW ---------------------------------------------------------------------


def decode_raw(path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None
               ) -> Image.Image:
    """An upright RGB image of a camera RAW file, longest side at least
    ``max_side`` where the file has that many pixels (the caller shrinks it).

    The embedded JPEG (or bitmap) preview is used when its longest side is at
    least ``max_side`` (without ``max_side``: at least the sensor's); else the
    sensor data is demosaicked, at half size when that still reaches ``max_side``.
    """
    try:
        import rawpy
    except ImportError:
        raise ImageReadError("camera RAW file: install rawpy to read it (pip install rawpy)")
    try:
        with rawpy.imread(os.fsdecode(os.fspath(path))) as raw:
            sizes = raw.sizes
            width, height = int(sizes.width), int(sizes.height)
            if width < 1 or height < 1:
                raise ImageReadError("image has no pixels")
            if max_pixels and width * height > max_pixels:
                raise ImageReadError(f"image too large ({width}x{height} pixels, limit {max_pixels:,})")
            need = max_side or max(width, height)
            preview = _preview(raw, rawpy, need)
            if preview is not None:
                return Image.fromarray(_flip(preview, int(sizes.flip)))
            half = max(width, height) // 2 >= need
            rgb = raw.postprocess(half_size=half, output_bps=8, use_camera_wb=True)
            return Image.fromarray(np.ascontiguousarray(rgb))  # postprocess applies the orientation
    except ImageReadError:
        raise
    except rawpy.LibRawError as e:
        raise ImageReadError(f"cannot decode camera RAW file: {_message(e)}")
    except (OSError, ValueError, MemoryError) as e:
        raise ImageReadError(f"cannot decode camera RAW file: {_message(e)}")


def _preview(raw, rawpy, need: int) -> np.ndarray | None:
    """The embedded preview as an RGB array if it has at least ``need``
    pixels on its longest side, else None."""
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:
        return None  # no preview, or one in a format LibRaw cannot hand out
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            with Image.open(io.BytesIO(thumb.data)) as im:
                if max(im.size) < need:
                    return None
                im.draft("RGB", (need, need))  # DCT scaling, never below need
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, EOFError):
            return None  # a damaged preview: demosaic instead
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        data = np.asarray(thumb.data)
        if data.ndim == 3 and data.shape[2] == 3 and data.dtype == np.uint8 and max(data.shape[:2]) >= need:
            return data
    return None


def _flip(arr: np.ndarray, flip: int) -> np.ndarray:
    """LibRaw's orientation code applied to an array as its demosaic does:
    bit 4 transposes, bit 2 reverses the rows, bit 1 the columns (6: 90
    degrees clockwise, 5: counter-clockwise, 3: 180)."""
    if flip & 2:
        arr = arr[::-1]
    if flip & 1:
        arr = arr[:, ::-1]
    if flip & 4:
        arr = arr.transpose(1, 0, 2)
    return np.ascontiguousarray(arr)


def _message(e: BaseException) -> str:
    text = e.args[0] if e.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(e).__name__
