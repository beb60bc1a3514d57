"""Autoencoder features on class-labelled sets: training time, reconstruction
error, and ARI / NMI / pairwise F1 of k-means at the true k on the latents,
beside pixels + PCA + k-means and HOG + k-means on the same images.

    python benchmarks/autoencoder.py                        # all sets, all losses
    python benchmarks/autoencoder.py --sets digits --losses mse --epochs 20
    python benchmarks/autoencoder.py --speed                # 2,000 images of 64 px, 20 epochs
    python benchmarks/autoencoder.py --losses perceptual --encoder effnet --encoder-blocks 5 --epochs 100

With --encoder effnet a row "effnet-front" gives k-means on the frozen
EfficientNet-Lite0 features that encoder starts from, without any training
(what the pretrained layers alone are worth).

Sets: ../shared/bench/labelled_flat/{fashion_mnist,tuxpaint_stamps} (truth.json
beside the images), scikit-learn's load_digits (1,797 8x8 digits, upsampled),
and any folder given by its path that holds images/ + truth.json, e.g. the
MNIST sample that benchmarks/make_mnist.py writes (--sets /tmp/mnist2k).
Prints one line per (set, features) and, at the end, the table as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterimg.images import load_image  # noqa: E402
from clusterimg.nn.autoencoder import AEOptions, _effnet_front, is_gray, to_input, train  # noqa: E402

BENCH_DIR = [Path("../shared/bench/labelled_flat")]  # relative to the project root; see --bench


def load_set(name: str):
    """(list of uint8 images, labels) of a labelled set."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return [np.round(im * (255 / 16)).astype(np.uint8) for im in d.images], np.asarray(d.target)
    folder = Path(name) if (Path(name) / "truth.json").is_file() else BENCH_DIR[0] / name
    truth = json.loads((folder / "truth.json").read_text())
    label = {p: g for g, members in enumerate(truth["groups"]) for p in members}
    paths = sorted(p.name for p in (folder / "images").iterdir() if p.name in label)
    images = [load_image(folder / "images" / p, max_side=256) for p in paths]
    return images, np.asarray([label[p] for p in paths])


def pairwise_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """F1 over all pairs put in one cluster (as score.py counts them)."""
    def pairs(labels):
        _, counts = np.unique(labels, return_counts=True)
        return float(np.sum(counts * (counts - 1) / 2))
    both = np.stack([truth, pred], 1)
    _, joint = np.unique(both, axis=0, return_counts=True)
    tp = float(np.sum(joint * (joint - 1) / 2))
    p, r = tp / max(pairs(pred), 1), tp / max(pairs(truth), 1)
    return 2 * p * r / max(p + r, 1e-12)


def scores(x: np.ndarray, labels: np.ndarray, k: int, l2: bool = False) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = np.asarray(x, np.float64)
    if l2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pred = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x)
    return {"ari": round(adjusted_rand_score(labels, pred), 3), "nmi": round(normalized_mutual_info_score(labels, pred), 3),
            "f1": round(pairwise_f1(labels, pred), 3)}


def pixels_pca(images, size=32, pca=50):
    from sklearn.decomposition import PCA

    gray = all(is_gray(im) for im in images)
    x = to_input(images, size, 1 if gray else 3).reshape(len(images), -1)
    return PCA(min(pca, len(x) - 1, x.shape[1]), random_state=0).fit_transform(x)


def hog_features(images, size=64):
    from skimage.feature import hog

    x = to_input(images, size, 1)[..., 0]
    return np.stack([hog(im, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for im in x])


def speed(epochs: int, overrides: dict | None = None) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [np.round(im * (255 / 16)).astype(np.uint8) for im in np.concatenate([d.images, d.images])[:2000]]
    x = to_input(images, 64, 1)
    options = AEOptions(**{"input_size": 64, "channels": 1, "epochs": epochs, "patience": epochs,  # defaults otherwise
                           **(overrides or {})})
    print(f"speed: options {options.to_json()}", flush=True)
    t0 = time.perf_counter()
    model = train(x, options, progress=lambda r: print(f"  epoch {r.epoch}: loss {r.loss:.5f} val {r.val_loss:.5f} "
                                                         f"{r.seconds:.1f} s", flush=True))
    print(f"speed: {len(x)} images of 64 px, {model.epochs_done} epochs, {options.loss} loss, {options.encoder} "
          f"encoder, latent {options.latent}: {time.perf_counter() - t0:.1f} s "
          "(jit compile included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["fashion_mnist", "digits", "tuxpaint_stamps"])
    ap.add_argument("--losses", nargs="+", default=["mse", "l1", "perceptual"])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--input-size", type=int, default=None, help="default: 32 for the 28/8 px gray sets, 64 else")
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better val loss")
    ap.add_argument("--encoder", choices=["conv", "effnet"], default="conv")
    ap.add_argument("--encoder-blocks", type=int, default=3, help="effnet encoder: EfficientNet blocks after the stem")
    ap.add_argument("--perceptual-blocks", type=int, default=3)
    ap.add_argument("--denoise", type=float, default=0.0, help="std of the noise added to training inputs")
    ap.add_argument("--speed", action="store_true", help="only the speed measurement (the default options)")
    ap.add_argument("--speed-options", type=json.loads, default=None,
                    help='with --speed: other options, as JSON, e.g. \'{"loss": "mse", "encoder": "conv"}\'')
    ap.add_argument("--bench", type=Path, default=BENCH_DIR[0], help="the labelled_flat folder [../shared/bench/labelled_flat]")
    args = ap.parse_args()
    BENCH_DIR[0] = args.bench
    if args.speed:
        speed(20, args.speed_options)
        return
    table = []
    for name in args.sets:
        images, labels = load_set(name)
        k = len(np.unique(labels))
        gray = all(is_gray(im) for im in images)
        small = name in ("digits", "fashion_mnist") or max(max(im.shape[:2]) for im in images) <= 32
        size = args.input_size or (32 if small else 64)
        print(f"{name}: {len(images)} images, {k} classes, {'gray' if gray else 'RGB'}, input {size} px", flush=True)
        for feat, fn in (("pixels32+pca50", pixels_pca), ("hog64", hog_features)):
            row = {"set": name, "features": feat, **scores(fn(images), labels, k)}
            print("  ", row, flush=True)
            table.append(row)
        x = to_input(images, size, 1 if gray else 3)
        if args.encoder == "effnet":
            front = np.asarray(_effnet_front(args.encoder_blocks)(x)).reshape(len(x), -1)
            row = {"set": name, "features": f"effnet-front{args.encoder_blocks} (frozen, untrained)",
                   **scores(front, labels, k)}
            print("  ", row, flush=True)
            table.append(row)
        for loss in args.losses:
            options = AEOptions(input_size=size, channels=1 if gray else 3, latent=args.latent, loss=loss,
                                epochs=args.epochs, augment=args.augment, patience=args.patience,
                                encoder=args.encoder, encoder_blocks=args.encoder_blocks,
                                perceptual_blocks=args.perceptual_blocks, denoise=args.denoise)
            t0 = time.perf_counter()
            model = train(x, options)
            seconds = time.perf_counter() - t0
            z = model.encode(x)
            for l2 in (False, True):
                tag = f"ae-{loss}" + (f"-effnet{args.encoder_blocks}" if args.encoder == "effnet" else "")
                row = {"set": name, "features": tag + ("+l2" if l2 else ""), **scores(z, labels, k, l2),
                       "train_s": round(seconds, 1), "epochs": model.epochs_done,
                       "recon_mse": round(model.reconstruction_error(x), 5)}
                print("  ", row, flush=True)
                table.append(row)
    print(json.dumps(table))


if __name__ == "__main__":
    main()
