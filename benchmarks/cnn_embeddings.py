"""Write the cnn embeddings of an image folder to an .npz file, for
experiments with clustering models outside the CLI.

    python benchmarks/cnn_embeddings.py FOLDER OUT.npz [--workers 2]

Keys: ``paths`` (file names relative to FOLDER, sorted, as ``discover``
lists them) and ``X`` (float32, one L2-normalised row per readable image).
Unreadable files are left out and listed on stderr. Written atomically
(a temporary name in the same folder, then renamed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clusterimg.engine.extract import extract_features
from clusterimg.features import get_method
from clusterimg.images import discover


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None, help="a user's ONNX model instead of EfficientNet-Lite0")
    args = ap.parse_args()
    method = get_method("cnn", model=args.model)
    files, _ = discover(args.folder)
    t = time.perf_counter()
    results = extract_features(method, [str(args.folder / f) for f in files], args.workers)
    seconds = time.perf_counter() - t
    keep = [(f, feat) for f, (feat, why) in zip(files, results) if feat is not None]
    for f, (feat, why) in zip(files, results):
        if feat is None:
            print(f"skipped {f}: {why}", file=sys.stderr)
    paths = np.array([f for f, _ in keep])
    x = np.stack([np.asarray(v, np.float32) for _, v in keep]) if keep else np.zeros((0, 0), np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".writing-", suffix=".npz", dir=args.out.parent)
    os.close(fd)
    try:
        np.savez(tmp, paths=paths, X=x)
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"{len(keep)} of {len(files)} images -> {args.out} {x.shape} in {seconds:.1f} s "
          f"({len(files) / max(seconds, 1e-9):.0f} images/s, {args.workers} workers; {method.describe()}, "
          f"model {method.params['model_sha256']})")


if __name__ == "__main__":
    main()
