"""Phone and camera formats through the one decoder: HEIC/HEIF, AVIF and
camera RAW (a DNG written here, byte by byte), EXIF/RAW orientation included,
and a one-line reason naming the package when an optional one is missing."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clusterimg
from clusterimg import formats
from clusterimg.errors import ImageReadError
from clusterimg.images import IMAGE_EXTENSIONS, discover, load_image
from conftest import make_photo, write_photo

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed")


def exif_rotated_90cw() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return exif.tobytes()


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# -- HEIC / HEIF ---------------------------------------------------------------------


def write_heic(path: Path, im: Image.Image, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    heif = pillow_heif.from_pillow(im)
    heif.save(path, quality=95, **save)
    return path


def test_heic_with_exif_orientation_is_decoded_upright(tmp_path):
    upright = make_photo(7, (240, 160))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # sideways, 160 x 240...
    path = write_heic(tmp_path / "IMG_0001.HEIC", stored, exif=exif_rotated_90cw())  # ...tagged to turn back

    arr = load_image(path)
    assert arr.shape == (160, 240, 3)
    assert mean_abs(arr, np.asarray(upright)) < 10
    assert mean_abs(arr[:, :160], np.asarray(stored)[:160]) > 30  # not merely the stored pixels

    small = load_image(path, max_side=120, gray=True)
    assert small.shape == (80, 120)


def test_heic_thumbnail_is_decoded_when_large_enough(tmp_path, monkeypatch):
    from pillow_heif.as_plugin import _LibHeifImageFile

    picked = []
    original = _LibHeifImageFile.draft
    monkeypatch.setattr(_LibHeifImageFile, "draft",
                        lambda self, mode, size: picked.append(original(self, mode, size)) or picked[-1])
    upright = make_photo(9, (640, 480))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    # with a thumbnail, as phones write them (an iPhone's is 320 x 240)
    path = write_heic(tmp_path / "IMG_0003.HEIC", stored, exif=exif_rotated_90cw(), thumbnails=[320])

    small = load_image(path, max_side=128)
    assert picked[-1] is not None and picked[-1][1][2:] == (320, 240)  # the thumbnail was decoded
    assert small.shape == (96, 128, 3)  # and turned upright like the image
    reference = np.asarray(upright.resize((128, 96), Image.Resampling.BOX))
    assert mean_abs(small, reference) < 12

    default = load_image(path, max_side=256)  # 320 x 240 covers 256 x 192
    assert picked[-1] is not None and default.shape == (192, 256, 3)

    big = load_image(path, max_side=400)  # the thumbnail is too small: the full image
    assert picked[-1] is None
    assert big.shape == (300, 400, 3)


def test_heic_and_its_jpeg_twin_land_in_one_cluster(tmp_path):
    root = tmp_path / "phone"
    shot = make_photo(11)
    write_heic(root / "IMG_0002.heic", shot)
    write_photo(root / "IMG_0002.jpg", shot, quality=85)
    for k in range(3):
        write_photo(root / f"other_{k}.jpg", make_photo(200 + k), quality=90)
    write_heic(root / "other_heif.heif", make_photo(300))

    found, skipped = discover(root)
    assert "IMG_0002.heic" in found and "other_heif.heif" in found and not skipped

    result = clusterimg.cluster(root, method="phash", cache=False, workers=1)
    assert [c.members for c in result.clusters] == [["IMG_0002.heic", "IMG_0002.jpg"]]
    assert "other_heif.heif" in result.outliers
    assert result.skipped == []


def test_broken_heic_is_skipped_with_a_reason_and_the_run_goes_on(tmp_path):
    root = tmp_path / "phone"
    write_heic(root / "good.heic", make_photo(3))
    (root / "broken.heic").write_bytes(write_heic(tmp_path / "x.heic", make_photo(4)).read_bytes()[:200])
    result = clusterimg.cluster(root, method="phash", cache=False, workers=1)
    assert result.images == 1
    assert [s.path for s in result.skipped] == ["broken.heic"]
    assert "\n" not in result.skipped[0].reason


def test_missing_pillow_heif_names_the_package(tmp_path, monkeypatch):
    path = write_heic(tmp_path / "a.heic", make_photo(5))
    monkeypatch.setattr(formats, "_heif_state", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    with pytest.raises(ImageReadError, match="pip install pillow-heif"):
        load_image(path)


# -- AVIF -----------------------------------------------------------------------------


def test_avif_with_exif_orientation_is_decoded_upright(tmp_path):
    if formats._register_avif():
        pytest.skip("no AVIF support here (neither Pillow's own nor a plug-in)")
    upright = make_photo(8, (240, 160))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    path = tmp_path / "pic.avif"
    try:
        stored.save(path, quality=95, exif=exif_rotated_90cw())
    except (KeyError, OSError, ValueError) as e:
        pytest.skip(f"no AVIF writer here: {e}")
    assert "pic.avif" in discover(tmp_path)[0]
    arr = load_image(path)
    assert arr.shape == (160, 240, 3)
    assert mean_abs(arr, np.asarray(upright)) < 12


# -- camera RAW: a DNG written here ---------------------------------------------------------

BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10
FMT = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I"}


def _ifd(entries: list, base: int, next_ifd: int = 0) -> bytes:
    """One little-endian TIFF IFD placed at ``base``, its long values right after it."""
    entries = sorted(entries, key=lambda e: e[0])
    head = struct.pack("<H", len(entries))
    body, extra = b"", b""
    extra_base = base + 2 + 12 * len(entries) + 4
    for tag, typ, values in entries:
        if typ == ASCII:
            data = values.encode() + b"\0"
            count = len(data)
        elif typ in (RATIONAL, SRATIONAL):
            count = len(values)
            data = b"".join(struct.pack("<ii" if typ == SRATIONAL else "<II", *v) for v in values)
        else:
            count = len(values)
            data = struct.pack("<" + FMT[typ] * count, *values)
        if len(data) <= 4:
            body += struct.pack("<HHI", tag, typ, count) + data.ljust(4, b"\0")
        else:
            extra += b"\0" * (len(extra) % 2)
            body += struct.pack("<HHII", tag, typ, count, extra_base + len(extra))
            extra += data
    out = head + body + struct.pack("<I", next_ifd) + extra
    return out + b"\0" * (len(out) % 2)


def write_dng(path: Path, cfa: np.ndarray, preview: Image.Image | None = None, orientation: int = 1) -> Path:
    """A minimal valid DNG 1.4: a 16-bit RGGB Bayer mosaic (uncompressed),
    identity colour matrix, neutral white balance, EXIF orientation code, and
    optionally a JPEG preview in IFD0 (the raw data then in a SubIFD, as
    cameras and converters lay it out)."""
    h, w = cfa.shape
    raw = cfa.astype("<u2").tobytes()
    jpeg = b""
    if preview is not None:
        buf = io.BytesIO()
        preview.save(buf, "JPEG", quality=92)
        jpeg = buf.getvalue()
    common = [
        (0x0112, SHORT, [orientation]), (0xC612, BYTE, [1, 4, 0, 0]), (0xC613, BYTE, [1, 1, 0, 0]),
        (0x010F, ASCII, "clusterimg"), (0x0110, ASCII, "test DNG"), (0xC614, ASCII, "clusterimg test DNG"),
        (0xC621, SRATIONAL, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),
        (0xC628, RATIONAL, [(1, 1), (1, 1), (1, 1)]), (0xC65A, SHORT, [21]),
    ]

    def raw_entries(offset: int) -> list:
        return [
            (0x00FE, LONG, [0]), (0x0100, LONG, [w]), (0x0101, LONG, [h]), (0x0102, SHORT, [16]),
            (0x0103, SHORT, [1]), (0x0106, SHORT, [32803]), (0x0111, LONG, [offset]), (0x0115, SHORT, [1]),
            (0x0116, LONG, [h]), (0x0117, LONG, [len(raw)]), (0x011C, SHORT, [1]),
            (0x828D, SHORT, [2, 2]), (0x828E, BYTE, [0, 1, 1, 2]), (0xC61D, LONG, [65535]),
        ]

    if preview is None:
        size = len(_ifd(common + raw_entries(0), 8))
        blob = _ifd(common + raw_entries(8 + size), 8) + raw
    else:
        pw, ph = preview.size

        def ifd0(jpeg_at: int, sub_at: int) -> list:
            return common + [
                (0x00FE, LONG, [1]), (0x0100, LONG, [pw]), (0x0101, LONG, [ph]), (0x0102, SHORT, [8, 8, 8]),
                (0x0103, SHORT, [7]), (0x0106, SHORT, [6]), (0x0111, LONG, [jpeg_at]), (0x0115, SHORT, [3]),
                (0x0116, LONG, [ph]), (0x0117, LONG, [len(jpeg)]), (0x014A, LONG, [sub_at]),
            ]

        size0 = len(_ifd(ifd0(0, 0), 8))
        size1 = len(_ifd(raw_entries(0), 0))
        sub_at = 8 + size0
        raw_at = sub_at + size1
        blob = _ifd(ifd0(raw_at + len(raw), sub_at), 8) + _ifd(raw_entries(raw_at), sub_at) + raw + jpeg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + blob)
    return path


def red_left_blue_right(h: int = 64, w: int = 96) -> np.ndarray:
    """An RGGB mosaic whose left half is red and right half blue."""
    cfa = np.full((h, w), 1000, dtype=np.uint16)
    left = np.arange(w) < w // 2
    cfa[0::2, 0::2] = np.where(left[0::2], 60000, 1000)  # R sites
    cfa[1::2, 1::2] = np.where(left[1::2], 1000, 60000)  # B sites
    return cfa


def red_and_blue_sides(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the left and right quarters."""
    w = arr.shape[1]
    return arr[:, : w // 4].reshape(-1, 3).mean(0), arr[:, -(w // 4):].reshape(-1, 3).mean(0)


rawpy = pytest.importorskip("rawpy", reason="rawpy is not installed")


def test_dng_sensor_data_is_demosaicked_to_its_size_and_pattern(tmp_path):
    path = write_dng(tmp_path / "shot.dng", red_left_blue_right())
    assert "shot.dng" in discover(tmp_path)[0]

    full = load_image(path)  # no preview: the whole sensor
    assert full.shape == (64, 96, 3)
    left, right = red_and_blue_sides(full)
    assert left[0] > 200 and left[2] < 100  # red
    assert right[2] > 200 and right[0] < 100  # blue

    half = load_image(path, max_side=48)  # half-size demosaic is enough
    assert half.shape == (32, 48, 3)
    left, right = red_and_blue_sides(half)
    assert left[0] > 200 and right[2] > 200

    gray = load_image(path, max_side=40, gray=True)
    assert gray.shape == (27, 40)


def test_raw_preview_is_used_when_large_enough_else_the_sensor(tmp_path):
    green = Image.new("RGB", (48, 32), (20, 200, 20))  # the preview shows something else on purpose
    path = write_dng(tmp_path / "IMG_1.DNG", red_left_blue_right(), preview=green)

    quick = load_image(path, max_side=40)  # preview 48 px >= 40: the preview
    assert quick.shape == (27, 40, 3)
    assert quick[..., 1].mean() > 150 and quick[..., 0].mean() < 80

    fine = load_image(path, max_side=90)  # preview too small: demosaic (full, as half is 48 < 90)
    assert fine.shape == (60, 90, 3)
    left, right = red_and_blue_sides(fine)
    assert left[0] > 200 and right[2] > 200


def test_raw_orientation_turns_preview_and_demosaic_alike(tmp_path):
    preview = Image.fromarray(np.repeat(np.repeat(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8), 32, 0), 24, 1))
    assert preview.size == (48, 32)  # red left, blue right, like the sensor
    path = write_dng(tmp_path / "turned.dng", red_left_blue_right(), preview=preview, orientation=6)

    for arr in (load_image(path, max_side=40), load_image(path, max_side=90)):
        assert arr.shape[0] > arr.shape[1]  # portrait: turned 90 degrees
        h = arr.shape[0]
        top, bottom = arr[: h // 4].reshape(-1, 3).mean(0), arr[-(h // 4):].reshape(-1, 3).mean(0)
        assert top[0] > 180 and top[2] < 100  # clockwise: the red left side is now on top
        assert bottom[2] > 180 and bottom[0] < 100


def test_broken_raw_is_one_line_and_the_run_goes_on(tmp_path):
    root = tmp_path / "card"
    write_dng(root / "good.dng", red_left_blue_right())
    (root / "broken.nef").write_bytes(b"not a raw file at all" * 20)
    (root / "empty.cr2").write_bytes(b"")
    with pytest.raises(ImageReadError, match="camera RAW") as info:
        load_image(root / "broken.nef")
    assert "\n" not in str(info.value)
    result = clusterimg.cluster(root, method="phash", cache=False, workers=1)
    assert result.images == 1
    assert [s.path for s in result.skipped] == ["broken.nef", "empty.cr2"]


def test_missing_rawpy_names_the_package(tmp_path, monkeypatch):
    path = write_dng(tmp_path / "a.dng", red_left_blue_right())
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(ImageReadError, match="pip install rawpy"):
        load_image(path)


def test_an_uploaded_heic_without_a_file_name_is_decoded(tmp_path):
    # The HTTP API gets bytes, not a file name: the HEIF opener must be
    # registered from the file's own header. A fresh process, so no earlier
    # test has registered it already.
    path = write_heic(tmp_path / "upload.heic", make_photo(7, (240, 160)))
    code = ("import sys; from clusterimg.images import image_bytes, load_image; "
            "data = open(sys.argv[1], 'rb').read(); "
            "print(load_image(image_bytes(data), max_side=120, gray=True).shape)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(80, 120)"


# -- start-up --------------------------------------------------------------------------


def test_extensions_known_and_plugins_not_imported_at_start():
    assert {".heic", ".heif", ".avif", ".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2"} \
        <= IMAGE_EXTENSIONS
    code = ("import sys, clusterimg.images, clusterimg.cli; "
            "print([m for m in ('pillow_heif', 'rawpy', 'pillow_avif') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"
