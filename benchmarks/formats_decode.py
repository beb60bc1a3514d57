#!/usr/bin/env python3
"""Decode time of phone and camera formats through ``load_image``, against a
JPEG of the same picture.

    python3 benchmarks/formats_decode.py                      # a photo of ../shared/bench/photos
    python3 benchmarks/formats_decode.py --photo X.jpg --repeat 5

The photo is enlarged to a 12 MP phone frame (4032 x 3024) and written as
JPEG, as HEIC with and without the 320 px thumbnail phones embed, and as a
DNG (an RGGB mosaic of it, 16 bit, uncompressed) with and without a 1620 px
JPEG preview. Each file is decoded at the sizes the backends ask for (128 =
phash, 256 = the default, 512 = orb) and in full; the median of ``--repeat``
decodes is printed in milliseconds. Not part of the test run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from clusterimg.images import load_image  # noqa: E402
from test_formats import write_dng  # noqa: E402  (the tests' minimal DNG writer)


def mosaic(rgb: np.ndarray) -> np.ndarray:
    """An RGGB Bayer mosaic (16 bit) of an RGB picture."""
    a = rgb.astype(np.uint16) * 257
    cfa = np.empty(a.shape[:2], np.uint16)
    cfa[0::2, 0::2] = a[0::2, 0::2, 0]
    cfa[0::2, 1::2] = a[0::2, 1::2, 1]
    cfa[1::2, 0::2] = a[1::2, 0::2, 1]
    cfa[1::2, 1::2] = a[1::2, 1::2, 2]
    return cfa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    bench = next((p / "shared" / "bench" for p in ROOT.parents if (p / "shared" / "bench").is_dir()), None)
    if args.photo is None and bench is None:
        sys.exit("no ../shared/bench here: give --photo")
    photo = args.photo or sorted((bench / "photos").glob("*.jpg"))[0]
    import pillow_heif

    pillow_heif.register_heif_opener()
    frame = Image.open(photo).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"jpeg": tmp / "a.jpg", "heic": tmp / "a.heic", "heic+thumb": tmp / "b.heic",
                 "dng": tmp / "a.dng", "dng+preview": tmp / "b.dng"}
        frame.save(files["jpeg"], quality=90)
        frame.save(files["heic"], quality=90)
        frame.save(files["heic+thumb"], quality=90, thumbnails=[320])
        cfa = mosaic(np.asarray(frame))
        write_dng(files["dng"], cfa)
        write_dng(files["dng+preview"], cfa, preview=frame.resize((1620, 1215), Image.Resampling.BOX))
        sides = [128, 256, 512, None]
        print(f"photo {photo.name} as 4032x3024; median of {args.repeat} decodes, ms")
        print(f"{'file':12s} " + " ".join(f"{('full' if s is None else s):>8}" for s in sides))
        for name, path in files.items():
            row = []
            for side in sides:
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    load_image(path, max_side=side)
                    times.append(time.perf_counter() - t)
                row.append(f"{statistics.median(times) * 1000:8.1f}")
            print(f"{name:12s} " + " ".join(row))


if __name__ == "__main__":
    main()
