"""A sweep of autoencoder settings: which ones make the latents cluster well.

    python benchmarks/autoencoder_sweep.py --out sweep.jsonl              # every setting, every set
    python benchmarks/autoencoder_sweep.py --only mse eff5_perc --sets fashion_mnist --workers 1

For each (setting, set): train (200 epochs, early stopping with patience 20
unless the setting says otherwise), encode, and score the latents with
k-means, k-means on L2-normalised / standardised latents, ward, and a
manifold step (spectral embedding of the L2-normalised latents, then a GMM)
at the true k (ARI). One JSON line per run, to stdout and to --out.
README.md ("What makes the latents cluster") summarises one run of it
(on a GPU, 10 workers). Runs are independent processes (--workers).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

EFF3 = {"encoder": "effnet", "encoder_blocks": 3}
SETTINGS = {
    "mse": {},
    "mse_e25": {"epochs": 25, "patience": 5},
    "mse_aug": {"augment": True},
    "mse_dn2": {"denoise": 0.2},
    "mse_dn4": {"denoise": 0.4},
    "mse_dn2_aug": {"denoise": 0.2, "augment": True},
    "mse_wd": {"weight_decay": 0.05},
    "mse_l16": {"latent": 16},
    "mse_l32_dn2": {"latent": 32, "denoise": 0.2},
    "mse_w32": {"width": 32},
    "l1": {"loss": "l1"},
    "l1_dn2": {"loss": "l1", "denoise": 0.2},
    "perc": {"loss": "perceptual"},
    "perc_pw10": {"loss": "perceptual", "pixel_weight": 10.0},
    "perc_b1": {"loss": "perceptual", "perceptual_blocks": 1},
    "perc_b5": {"loss": "perceptual", "perceptual_blocks": 5},
    "perc_dn2": {"loss": "perceptual", "denoise": 0.2},
    "eff3": EFF3,
    "eff1": {"encoder": "effnet", "encoder_blocks": 1},
    "eff5": {"encoder": "effnet", "encoder_blocks": 5},
    "eff0": {"encoder": "effnet", "encoder_blocks": 0},
    "eff3_dn2": dict(EFF3, denoise=0.2),
    "eff3_aug": dict(EFF3, augment=True),
    "eff3_l16": dict(EFF3, latent=16),
    "eff3_perc": dict(EFF3, loss="perceptual"),
    "eff5_perc": {"encoder": "effnet", "encoder_blocks": 5, "loss": "perceptual"},
}


def latent_scores(z: np.ndarray, y: np.ndarray, k: int) -> dict:
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.manifold import SpectralEmbedding
    from sklearn.metrics import adjusted_rand_score as ari
    from sklearn.mixture import GaussianMixture

    z = np.asarray(z, np.float64)
    l2 = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    std = (z - z.mean(0)) / (z.std(0) + 1e-9)
    km = lambda a: KMeans(k, n_init=10, random_state=0).fit_predict(a)
    r = {"km": ari(y, km(z)), "km_l2": ari(y, km(l2)), "km_std": ari(y, km(std)),
         "ward": ari(y, AgglomerativeClustering(k).fit_predict(z)),
         "ward_l2": ari(y, AgglomerativeClustering(k).fit_predict(l2))}
    e = SpectralEmbedding(k, affinity="nearest_neighbors", n_neighbors=10, random_state=0).fit_transform(l2)
    r["se_gmm_l2"] = ari(y, GaussianMixture(k, covariance_type="full", random_state=0, n_init=3).fit_predict(e))
    return {a: round(float(b), 3) for a, b in r.items()}


def run_one(args) -> dict:
    name, set_name, bench, out, epochs = args
    import autoencoder as bench_mod

    from clusterimg.nn.autoencoder import AEOptions, is_gray, to_input, train

    bench_mod.BENCH_DIR[0] = Path(bench)
    images, y = bench_mod.load_set(set_name)
    gray = all(is_gray(im) for im in images)
    x = to_input(images, 32 if set_name in ("digits", "fashion_mnist") else 64, 1 if gray else 3)
    options = dict(input_size=x.shape[1], channels=x.shape[3], latent=64, loss="mse", epochs=200, patience=20)
    options.update(SETTINGS[name])
    if epochs:
        options["epochs"] = epochs
    try:
        t0 = time.perf_counter()
        model = train(x, AEOptions(**options))
        row = {"name": name, "set": set_name, "s": round(time.perf_counter() - t0, 1), "epochs": model.epochs_done,
               "recon": round(model.reconstruction_error(x), 5), **latent_scores(model.encode(x), y, len(set(y)))}
    except Exception:  # one failed setting does not stop the sweep
        row = {"name": name, "set": set_name, "error": traceback.format_exc()[-800:]}
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["fashion_mnist", "digits"])
    ap.add_argument("--only", nargs="+", choices=sorted(SETTINGS), default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--epochs", type=int, default=0, help="override every setting's epochs (quick checks)")
    ap.add_argument("--bench", default="../shared/bench/labelled_flat", help="the labelled_flat folder (from the project root)")
    args = ap.parse_args()
    names = args.only or list(SETTINGS)
    jobs = [(n, s, args.bench, args.out, args.epochs) for s in args.sets for n in names]
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with ProcessPoolExecutor(max(1, args.workers)) as ex:
        list(ex.map(run_one, jobs))


if __name__ == "__main__":
    main()
