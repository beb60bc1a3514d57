"""Discovery and the one decoder: every awkward format a photo dump holds."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clusterimg.errors import ImageReadError
from clusterimg.images import discover, load_image
from conftest import make_photo, write_photo


def test_discover_sorted_recursive_and_accounts_for_every_file(tmp_path):
    write_photo(tmp_path / "b.jpg", make_photo(1))
    write_photo(tmp_path / "A.PNG", make_photo(2))
    write_photo(tmp_path / "sub" / "c.webp", make_photo(3))
    write_photo(tmp_path / "x.jpg" / "inner.jpg", make_photo(4))  # a folder named like an image
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "._b.jpg").write_bytes(b"\0\5\26\7")
    write_photo(tmp_path / ".thumbnails" / "t.jpg", make_photo(5))

    found, skipped = discover(tmp_path)
    assert found == ["A.PNG", "b.jpg", "sub/c.webp", "x.jpg/inner.jpg"]
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"notes.txt", ".DS_Store", "._b.jpg"}
    assert "AppleDouble" in reasons["._b.jpg"]

    flat, _ = discover(tmp_path, recursive=False)
    assert flat == ["A.PNG", "b.jpg"]


def test_discover_leaves_out_the_excluded_output_folder(tmp_path):
    write_photo(tmp_path / "a.jpg", make_photo(1))
    write_photo(tmp_path / "out" / "cluster_0001" / "a.jpg", make_photo(1))
    found, _ = discover(tmp_path, exclude=tmp_path / "out")
    assert found == ["a.jpg"]


def reference(seed=7):
    return make_photo(seed, (240, 160))


def close_to_reference(arr: np.ndarray, tolerance: float = 8.0) -> bool:
    ref = np.asarray(reference().convert("L"), dtype=np.float64)
    if arr.shape != ref.shape:
        return False
    return float(np.abs(arr.astype(np.float64) - ref).mean()) < tolerance


def test_exif_orientation_is_applied(tmp_path):
    im = reference().transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and tagged "rotate 90 CW to display"
    path = write_photo(tmp_path / "r.jpg", im, quality=95, exif=exif)
    assert close_to_reference(load_image(path, gray=True))


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L"])
def test_colour_modes_decode_to_the_same_picture(tmp_path, mode):
    im = reference()
    if mode == "RGBA":
        im = im.convert("RGBA")  # fully opaque: compositing must not change it
    elif mode == "LA":
        im = im.convert("LA")
    else:
        im = im.convert(mode)
    path = write_photo(tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}", im)
    rgb = load_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (160, 240, 3)
    assert close_to_reference(load_image(path, gray=True), tolerance=12)


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    arr = load_image(write_photo(tmp_path / "t.png", im))
    assert (arr == 255).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    gray8 = np.asarray(reference().convert("L"), dtype=np.uint16)
    im16 = Image.fromarray(gray8 * 257)  # 16-bit with the same picture
    path = write_photo(tmp_path / "g16.png", im16)
    assert Image.open(path).mode.startswith("I")
    assert close_to_reference(load_image(path, gray=True), tolerance=1.5)


def test_animated_gif_and_multipage_tiff_use_their_first_frame(tmp_path):
    first, second = reference(), make_photo(99, (240, 160))
    gif = tmp_path / "a.gif"
    first.save(gif, save_all=True, append_images=[second], duration=100)
    tif = tmp_path / "m.tif"
    first.save(tif, save_all=True, append_images=[second])
    assert close_to_reference(load_image(gif, gray=True), tolerance=20)
    assert close_to_reference(load_image(tif, gray=True), tolerance=2)


def test_jpeg_is_decoded_reduced_to_what_the_backend_needs(tmp_path):
    path = write_photo(tmp_path / "big.jpg", make_photo(3, (1600, 1200)), quality=90)
    small = load_image(path, max_side=128, gray=True)
    assert max(small.shape) == 128 and small.shape == (96, 128)
    assert load_image(path).shape == (1200, 1600, 3)


def test_truncated_jpeg_decodes_what_is_there(tmp_path):
    data = io.BytesIO()
    reference().save(data, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    assert load_image(path, gray=True).shape == (160, 240)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: only its header, no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"just some notes, not a picture", "cannot identify"),
    (png_header_only(60000, 60000), "too large"),
])
def test_unreadable_files_raise_a_one_line_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_one_pixel_image_decodes(tmp_path):
    path = write_photo(tmp_path / "p.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    assert load_image(path, max_side=64).shape == (1, 1, 3)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("gray", [True, False])
@pytest.mark.parametrize("options", [dict(max_side=60, reduce_only=True), dict(max_side=100), dict(min_side=50)])
def test_the_opencv_jpeg_path_gives_pillows_pixels(tmp_path, monkeypatch, orientation, gray, options):
    # Reduced JPEGs are decoded by OpenCV for speed; the result must be the
    # very pixels of Pillow's draft decode, EXIF orientation included.
    import clusterimg.images as images

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write_photo(tmp_path / "r.jpg", make_photo(3, (641, 479)), quality=90, exif=exif)
    calls = []
    real = images._reduced_jpeg
    monkeypatch.setattr(images, "_reduced_jpeg", lambda *a: calls.append(1) or real(*a))
    fast = load_image(path, gray=gray, **options)
    assert calls
    monkeypatch.setattr(images, "_reduced_jpeg", lambda *a: None)
    slow = load_image(path, gray=gray, **options)
    assert fast.shape == slow.shape and np.array_equal(fast, slow)
    assert (fast.shape[0] > fast.shape[1]) == (orientation in (5, 6, 7, 8))  # upright


def test_truncated_and_cmyk_jpegs_take_the_pillow_path(tmp_path):
    import clusterimg.images as images

    whole = write_photo(tmp_path / "whole.jpg", make_photo(4, (400, 300)), quality=90).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    cut = load_image(tmp_path / "cut.jpg", max_side=100, gray=True)  # decoded as far as the data goes
    assert cut.shape == (75, 100)
    with Image.open(io.BytesIO(whole[: len(whole) * 2 // 3])) as im:
        assert images._reduced_jpeg(io.BytesIO(whole[: len(whole) * 2 // 3]), im, (100, 75), True) is None
    write_photo(tmp_path / "c.jpg", make_photo(4, (400, 300)).convert("CMYK"))
    with Image.open(tmp_path / "c.jpg") as im:
        assert images._reduced_jpeg(io.BytesIO((tmp_path / "c.jpg").read_bytes()), im, (100, 75), True) is None
    assert load_image(tmp_path / "c.jpg", max_side=100).shape == (75, 100, 3)
