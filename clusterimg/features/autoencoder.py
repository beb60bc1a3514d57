"""Latent vectors of a convolutional autoencoder trained on the folder itself.

With ``--ae PATH`` a saved model (``clusterimg train-ae``) is used. Without it,
:meth:`Autoencoder.prepare` trains one on the images about to be clustered,
or reuses the one trained earlier on the same files (paths, sizes, mtimes)
with the same options, kept in ``<cache dir>/models/``; ``--retrain`` forces
a new one. The feature of an image is its latent vector.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from clusterimg.errors import ClusterimgError, ImageReadError
from clusterimg.features.base import Option, VectorMethod
from clusterimg.images import load_image

DEFAULT_EPOCHS = 30


class Autoencoder(VectorMethod):
    name = "autoencoder"
    summary = "classes of images learned from the folder itself (a conv autoencoder's latent vectors)"
    default_threshold = 0.9
    options = (
        Option("ae", str, "", "saved autoencoder model (clusterimg train-ae); default: train one on the folder"),
        Option("loss", str, "perceptual", "autoencoder training loss", choices=("mse", "l1", "perceptual")),
        Option("encoder", str, "effnet", "autoencoder encoder: conv (trained from scratch) or effnet (frozen "
               "EfficientNet-Lite0 first blocks + trained layers)", choices=("conv", "effnet")),
        Option("epochs", int, DEFAULT_EPOCHS, "autoencoder training epochs (early stopping on 10 % held out)"),
        Option("latent", int, 10, "size of the autoencoder's latent vector"),
        Option("input_size", int, 64, "side of the square images the autoencoder sees (a multiple of 16)"),
        Option("retrain", bool, False, "train a new autoencoder even if one for these files is cached"),
    )
    decode_side = 256
    decode_gray = False

    def __init__(self, **values):
        super().__init__(**values)
        self.model = None  # TrainedAE, set by prepare()
        self.model_dir: Path | None = None  # where trained models are cached (default: cache dir / models)
        self.status = ""  # one line: what prepare() did

    def check_params(self) -> None:
        from clusterimg.nn.autoencoder import AEOptions

        if self.params["epochs"] < 1 or self.params["latent"] < 1:
            raise ValueError("--epochs and --latent must be at least 1")
        AEOptions(input_size=self.params["input_size"]).check()

    # -- the model
    def training_options(self, channels: int):
        from clusterimg.nn.autoencoder import AEOptions

        return AEOptions(input_size=self.params["input_size"], channels=channels, latent=self.params["latent"],
                         loss=self.params["loss"], epochs=self.params["epochs"], encoder=self.params["encoder"])

    def prepare(self, paths: Sequence[str], bars=None) -> None:
        """Load ``--ae``, or train on ``paths`` (or reuse a cached model), and
        put the model's hash into ``params`` so cached features follow the model."""
        from clusterimg.nn.autoencoder import TrainedAE, fingerprint

        if self.params["ae"]:
            self.use(TrainedAE.load(self.params["ae"]))
            self.status = f"autoencoder {self.params['ae']}"
            return
        folder_id = fingerprint(paths)
        images, _ = read_images(paths, self.params["input_size"], bars)
        if len(images) < 2:
            raise ClusterimgError("at least 2 readable images are needed to train an autoencoder")
        from clusterimg.nn.autoencoder import is_gray

        channels = 1 if all(is_gray(im) for im in images) else 3
        options = self.training_options(channels)
        key = hashlib.sha256(json.dumps({"folder": folder_id, "options": options.to_json()},
                                        sort_keys=True).encode()).hexdigest()[:24]
        cached = self.models_folder() / f"{key}.ae.npz"
        if cached.is_file() and not self.params["retrain"]:
            try:
                self.use(TrainedAE.load(cached))
                self.status = f"autoencoder reused from {cached}"
                return
            except ClusterimgError:
                pass  # unreadable cached model: train again (it is replaced)
        model = train_with_bar(images, options, bars, folder_id)
        if model.interrupted:
            raise KeyboardInterrupt
        try:
            model.save(cached)
            self.status = f"autoencoder trained ({model.epochs_done} epochs), kept in {cached}"
        except OSError as e:
            self.status = f"autoencoder trained ({model.epochs_done} epochs); not kept: {e}"
        self.use(model)

    def models_folder(self) -> Path:
        if self.model_dir is not None:
            return Path(self.model_dir)
        from clusterimg.cache import default_cache_dir

        return default_cache_dir() / "models"

    def use(self, model) -> None:
        """Take ``model`` (a TrainedAE); its options and hash go into params."""
        self.model = model
        o = model.options
        self.params.update(loss=o.loss, latent=o.latent, input_size=o.input_size, encoder=o.encoder,
                           model=model.digest())

    # -- features
    def extract(self, image: np.ndarray) -> np.ndarray:
        return self.extract_many([image])[0]

    def extract_many(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        from clusterimg.nn.autoencoder import to_input

        if self.model is None:
            raise RuntimeError("Autoencoder.prepare() must run before extraction")
        o = self.model.options
        z = self.model.encode(to_input(images, o.input_size, o.channels))
        return list(z)

    def describe(self) -> str:
        return f"{self.name}({self.status or ', '.join(f'{k}={v}' for k, v in self.params.items())})"


def read_images(paths: Sequence[str], size: int, bars=None) -> tuple[list[np.ndarray], list[int]]:
    """Decoded images (RGB uint8, longest side ~2x the input size) and the
    indices of ``paths`` they came from; unreadable files are left out."""
    from clusterimg.progress import no_bar

    images, kept = [], []
    with (bars or no_bar)("reading images for the autoencoder")(len(paths)) as bar:
        for k, path in enumerate(paths):
            try:
                images.append(load_image(path, max_side=max(2 * size, 64)))
                kept.append(k)
            except ImageReadError:
                pass  # reported when features are extracted
            bar.update(1)
    return images, kept


def train_with_bar(images: Sequence[np.ndarray], options, bars=None, folder_id: str = ""):
    """Train on decoded images, one progress step per epoch."""
    from clusterimg.nn.autoencoder import to_input, train
    from clusterimg.progress import no_bar

    x = to_input(images, options.input_size, options.channels)
    with (bars or no_bar)(f"training autoencoder ({options.loss})")(options.epochs) as bar:
        return train(x, options, progress=lambda r: bar.update(1), folder_fingerprint=folder_id)
