"""A small convolutional autoencoder trained on the user's own images (JAX on CPU).

Layers come from equinox (a model is a plain pytree of arrays, so jax.grad,
optax and saving it as npz need no extra state handling), the optimiser from
optax. Everything runs on the CPU and is seeded: the same images and options
give the same model and the same latent vectors.

Images enter as float32 arrays in [0, 1], shape (n, size, size, channels)
(see :func:`to_input`). The encoder halves the resolution four times (so the
input size must be a multiple of 16), then a dense layer gives the latent
vector; the decoder mirrors it with sub-pixel convolutions and a sigmoid.
With ``encoder="effnet"`` the encoder's first layers are the frozen stem and
first blocks of EfficientNet-Lite0 (constants loaded from the installed
weights, not part of the saved model); the trained convolutions take over
from there. Jitted training and inference functions are made once per
process and options (:func:`_training_functions`), so repeated runs with the
same options and shapes compile once.

Saved models are one ``.npz`` file (no pickle): the weights as arrays
``w0 .. wN`` (the pytree's leaves in order), optionally the optimiser state
``o0 .. oM`` for resuming, and ``meta``: a JSON text with the format name and
version, the options, the training history and the training folder's
fingerprint. jax, equinox and optax are imported only when a model is built.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clusterimg.atomic import atomic_file
from clusterimg.errors import ClusterimgError

FORMAT = "clusterimg-autoencoder"
FORMAT_VERSION = 1
LOSSES = ("mse", "l1", "perceptual")
ENCODERS = ("conv", "effnet")


@dataclass(frozen=True)
class AEOptions:
    """Everything a trained model depends on besides the images."""

    input_size: int = 64  # square input side, a multiple of 16
    channels: int = 1  # 1 = gray, 3 = RGB
    latent: int = 10  # small: the latents cluster by class better (issue 12's measurements, README)
    width: int = 16  # channels of the first conv layer (then 2x, 4x, 4x)
    loss: str = "perceptual"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1  # held out for early stopping
    patience: int = 5  # epochs without a better validation loss before stopping
    augment: bool = False  # random horizontal flips and small shifted crops
    pixel_weight: float = 1.0  # perceptual loss: weight of the added pixel (mse) term
    perceptual_blocks: int = 3  # perceptual loss: EfficientNet-Lite0 blocks after the stem
    denoise: float = 0.0  # std of the Gaussian noise added to training inputs (the target stays clean)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (0: plain Adam)
    encoder: str = "effnet"  # conv: trained from scratch; effnet: frozen EfficientNet-Lite0 stem + blocks first
    encoder_blocks: int = 5  # effnet encoder: EfficientNet-Lite0 blocks after the stem (0..5)

    def check(self) -> None:
        """ValueError with a user-facing message for impossible options."""
        if self.input_size < 16 or self.input_size % 16:
            raise ValueError(f"--input-size must be a multiple of 16 (got {self.input_size})")
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 (gray) or 3 (RGB)")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}")
        for name in ("latent", "width", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise ValueError("--lr must be positive")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("the validation fraction must be in [0, 1)")
        if not 0 <= self.perceptual_blocks <= 16:
            raise ValueError("perceptual_blocks must be in 0..16")
        if self.encoder not in ENCODERS:
            raise ValueError(f"--encoder must be one of {', '.join(ENCODERS)}")
        if not 0 <= self.encoder_blocks <= 5:
            raise ValueError("encoder_blocks must be in 0..5")
        if not self.denoise >= 0 or not self.weight_decay >= 0:
            raise ValueError("--denoise and --weight-decay must be at least 0")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "AEOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class EpochReport:
    """What the per-epoch progress callback receives."""

    epoch: int  # 1-based
    epochs: int  # the planned number
    loss: float  # mean training loss of the epoch
    val_loss: float | None  # None without a validation set
    seconds: float  # time of this epoch
    eta: float  # estimated seconds left for the planned epochs
    best: bool  # this epoch is the best so far (it is the one kept)


# -- images -------------------------------------------------------------------


def to_input(images: Sequence[np.ndarray], size: int, channels: int) -> np.ndarray:
    """uint8 (or [0, 1] float) images of any size, gray or RGB, to the
    autoencoder's input: float32 (n, size, size, channels) in [0, 1].
    Each image is resized to a square (area interpolation when shrinking)."""
    import cv2

    out = np.empty((len(images), size, size, channels), np.float32)
    for k, im in enumerate(images):
        a = np.asarray(im)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if channels == 1 and a.ndim == 3:
            a = cv2.cvtColor(np.ascontiguousarray(a[:, :, :3]), cv2.COLOR_RGB2GRAY)
        elif channels == 3 and a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        a = a.astype(np.float32)
        if np.asarray(im).dtype == np.uint8:
            a /= 255.0
        shrink = a.shape[0] > size or a.shape[1] > size
        a = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[k] = a.reshape(size, size, channels)
    return np.clip(out, 0.0, 1.0)


def is_gray(image: np.ndarray) -> bool:
    """True for a 2-D image or an RGB one whose three channels are equal."""
    a = np.asarray(image)
    if a.ndim == 2 or a.shape[2] == 1:
        return True
    return bool(np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]))


def fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """Identity of a set of files: their resolved paths, sizes and mtimes (ns).
    Files that cannot be stat'ed count by path only."""
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(os.path.realpath(p) for p in paths):
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogatepass"))
        except OSError:
            h.update(f"{p}\0missing\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# -- the network --------------------------------------------------------------
#
# Convolutions are written as patches @ weights (im2col): on a CPU, XLA's own
# strided and transposed convolutions (and their gradients) ran 3-4x slower
# than one matrix product per layer. Layout NHWC, weights HWIO. Downsampling:
# 3x3 stride-2 convolutions (TF "SAME" padding); upsampling: a 3x3 convolution
# to 4x the channels, then a pixel shuffle (sub-pixel convolution).


def patches(x, k: int, stride: int):
    """(n, h, w, c) -> (n, ceil(h/s), ceil(w/s), k*k*c): the k x k neighbourhoods
    with TF "SAME" padding (the odd extra row/column at the bottom/right)."""
    import jax.numpy as jnp

    n, h, w, c = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    ph, pw = max((ho - 1) * stride + k - h, 0), max((wo - 1) * stride + k - w, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    cols = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(k) for j in range(k)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv2d(x, w, b, stride: int = 1):
    """NHWC convolution with HWIO weights ``w`` and bias ``b``, TF "SAME" padding.
    Stride 2 goes through :func:`patches` and a matrix product (faster on CPU,
    gradients included); stride 1 through XLA's convolution (no faster way)."""
    import jax

    if stride == 1:
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    k = w.shape[0]
    return patches(x, k, stride) @ w.reshape(-1, w.shape[-1]) + b


def pixel_shuffle(x):
    """(n, h, w, 4c) -> (n, 2h, 2w, c)."""
    n, h, w, c4 = x.shape
    c = c4 // 4
    return x.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


EFFNET_CHANNELS = (32, 16, 24, 24, 40, 40)  # EfficientNet-Lite0's channels after the stem + k blocks
EFFNET_LEVELS = (1, 1, 2, 2, 3, 3)  # its resolution halvings after the stem + k blocks


@lru_cache(maxsize=8)
def _effnet_front(blocks: int) -> Callable:
    """x (n, S, S, C) in [0, 1] -> the frozen EfficientNet-Lite0 stem + ``blocks``
    blocks (NHWC), no gradient into its weights (they are constants, not trained)."""
    from clusterimg.nn.effnet_jax import early_features, load_params

    params = load_params(blocks)

    def front(x):
        import jax
        import jax.numpy as jnp

        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        return jax.lax.stop_gradient(early_features(params, (x * 255.0 - 127.0) / 128.0, blocks))

    return front


@lru_cache(maxsize=1)
def _ae_class():
    """The model's class, made once (so models of the same options share a
    pytree structure and jitted functions are compiled once per structure)."""
    import equinox as eqx
    import jax

    class AE(eqx.Module):
        enc_w: list
        enc_b: list
        lat_w: jax.Array
        lat_b: jax.Array
        out_w: jax.Array
        out_b: jax.Array
        dec_w: list
        dec_b: list
        small: int = eqx.field(static=True)  # side at the bottleneck (S/16)
        top: int = eqx.field(static=True)  # channels at the bottleneck
        effnet_blocks: int = eqx.field(static=True)  # -1: the conv encoder from scratch

        def encode(self, x):  # x: (n, S, S, C) in [0, 1] -> (n, latent)
            return self.encode_front(self.front(x))

        def front(self, x):  # the untrained start of the encoder (nothing to learn in it)
            return x * 2.0 - 1.0 if self.effnet_blocks < 0 else _effnet_front(self.effnet_blocks)(x)

        def encode_front(self, h):  # front(x) -> (n, latent)
            for wk, bk in zip(self.enc_w, self.enc_b):
                h = jax.nn.relu(conv2d(h, wk, bk, 2))
            return h.reshape(h.shape[0], -1) @ self.lat_w + self.lat_b

        def decode(self, z):
            h = jax.nn.relu(z @ self.out_w + self.out_b).reshape(z.shape[0], self.small, self.small, self.top)
            last = len(self.dec_w) - 1
            for k, (wk, bk) in enumerate(zip(self.dec_w, self.dec_b)):
                h = pixel_shuffle(conv2d(h, wk, bk, 1))
                h = jax.nn.sigmoid(h) if k == last else jax.nn.relu(h)
            return h

        def __call__(self, x):
            return self.decode(self.encode(x))

    return AE


def _build(options: AEOptions, key):
    """The equinox model (encoder + decoder) with fresh weights from ``key``.

    conv encoder: four stride-2 3x3 convolutions (width w, 2w, 4w, 4w) from S to
    S/16. effnet encoder: the frozen EfficientNet-Lite0 stem + first blocks
    (S/2 .. S/8), then the last of those trainable convolutions down to S/16."""
    import jax
    import jax.numpy as jnp

    c, w, s = options.channels, options.width, options.input_size
    ladder = [w, 2 * w, 4 * w, 4 * w]  # encoder channels at S/2, S/4, S/8, S/16
    if options.encoder == "effnet":
        levels = EFFNET_LEVELS[options.encoder_blocks]
        chans = [EFFNET_CHANNELS[options.encoder_blocks]] + ladder[levels:]
    else:
        chans = [c] + ladder
    convs = len(chans) - 1
    dchans = [4 * w, 2 * w, w, max(w // 2, 4), c]  # decoder, at S/16 .. S (lighter than the encoder)
    small = s // 16
    flat = chans[-1] * small * small
    keys = list(jax.random.split(key, 10))

    def he(k, shape, fan_in):
        return jax.random.normal(k, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)

    enc_w = [he(keys[k], (3, 3, chans[k], chans[k + 1]), 9 * chans[k]) for k in range(convs)]
    dec_w = [he(keys[4 + k], (3, 3, dchans[k], 4 * dchans[k + 1]), 9 * dchans[k]) for k in range(4)]
    return _ae_class()(
        enc_w=enc_w, enc_b=[jnp.zeros(chans[k + 1]) for k in range(convs)],
        lat_w=he(keys[8], (flat, options.latent), flat) * 0.5, lat_b=jnp.zeros(options.latent),
        out_w=he(keys[9], (options.latent, flat), options.latent), out_b=jnp.zeros(flat),
        dec_w=dec_w, dec_b=[jnp.zeros(4 * dchans[k + 1]) for k in range(4)],
        small=small, top=chans[-1], effnet_blocks=options.encoder_blocks if options.encoder == "effnet" else -1)


def _skeleton(options: AEOptions):
    """A model of the right structure (weights to be replaced)."""
    import jax

    return _build(options, jax.random.PRNGKey(options.seed))


def _leaves(tree) -> list[np.ndarray]:
    import equinox as eqx
    import jax

    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def _with_leaves(skeleton, arrays: Sequence[np.ndarray]):
    """``skeleton`` with its array leaves replaced by ``arrays`` (checked)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    params, static = eqx.partition(skeleton, eqx.is_array)
    flat, treedef = jax.tree_util.tree_flatten(params)
    if len(flat) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays where the model has {len(flat)}")
    for a, b in zip(flat, arrays):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"array of shape {tuple(b.shape)} where the model has {tuple(a.shape)}")
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(b, dtype=a.dtype) for a, b in zip(flat, arrays)])
    return eqx.combine(params, static)


# -- losses ---------------------------------------------------------------------


def _loss_fn(options: AEOptions, perceptual_features: Callable | None):
    """per_sample(model, x, target, scale) -> (n,) losses of a batch: the model
    sees x (n, S, S, C), its reconstruction is compared with ``target``.

    perceptual: mean squared difference of the EfficientNet features of target
    and reconstruction, divided by ``scale`` (the variance of the training
    images' features, so the term is ~1 for a blank reconstruction), plus
    ``pixel_weight`` x the pixel mse."""
    import jax.numpy as jnp

    def pixel(x, y, kind):
        d = y - x
        return jnp.mean(jnp.abs(d) if kind == "l1" else d * d, axis=(1, 2, 3))

    def per_sample(model, x, target, scale, front=None, target_features=None):
        """``front``: model.front(x) and ``target_features``: the perceptual
        features of ``target``, when computed once before training (optional)."""
        y = model(x) if front is None else model.decode(model.encode_front(front))
        if options.loss in ("mse", "l1"):
            return pixel(target, y, options.loss)
        fx = perceptual_features(target) if target_features is None else target_features
        fy = perceptual_features(y)
        feat = jnp.mean((fx - fy) ** 2, axis=(1, 2, 3)) / scale
        return feat + options.pixel_weight * pixel(target, y, "mse")

    return per_sample


def _perceptual_extractor(options: AEOptions) -> Callable:
    """x (n, S, S, C) in [0, 1] -> EfficientNet-Lite0 early features (NHWC)."""
    from clusterimg.nn.effnet_jax import early_features, load_params

    params = load_params(options.perceptual_blocks)

    def features(x):
        import jax.numpy as jnp

        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        return early_features(params, (x * 255.0 - 127.0) / 128.0, options.perceptual_blocks)

    return features


def _trace_key(options: AEOptions) -> AEOptions:
    """The options with what does not change the traced computation set to
    fixed values: runs whose keys are equal share compiled functions."""
    return dataclasses.replace(options, epochs=1, seed=0, patience=1, val_fraction=0.0, batch_size=1)


@lru_cache(maxsize=16)
def _training_functions(key: AEOptions):
    """(optimiser, features, step, eval_sum) for options ``key`` (see
    :func:`_trace_key`): jitted once per process and options, not per run.

    step(model, opt_state, x, weight, rng, scale) -> (model, opt_state, loss);
    eval_sum(model, x, weight, scale) -> the weighted sum of the losses."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    options = key
    features = _perceptual_extractor(options) if options.loss == "perceptual" else None
    per_sample = _loss_fn(options, features)
    if options.weight_decay > 0:
        optimiser = optax.adamw(options.lr, weight_decay=options.weight_decay)
    else:
        optimiser = optax.adam(options.lr)
    pad = max(1, options.input_size // 16)

    def augment(x, rng):
        kf, kx, ky = jax.random.split(rng, 3)
        flip = jax.random.bernoulli(kf, 0.5, (x.shape[0],))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        dx = jax.random.randint(kx, (x.shape[0],), 0, 2 * pad + 1)
        dy = jax.random.randint(ky, (x.shape[0],), 0, 2 * pad + 1)
        crop = lambda im, a, b: jax.lax.dynamic_slice(im, (a, b, 0), x.shape[1:])
        return jax.vmap(crop)(padded, dy, dx)

    def batch_loss(model, x, weight, rng, scale, fixed=None):
        if fixed is not None:  # the inputs are the images themselves: their fixed parts computed once
            losses = per_sample(model, x, x, scale, *fixed)
            return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        ka, kn = jax.random.split(rng)
        if options.augment:
            x = augment(x, ka)
        seen = x
        if options.denoise > 0:
            seen = jnp.clip(x + options.denoise * jax.random.normal(kn, x.shape, x.dtype), 0.0, 1.0)
        losses = per_sample(model, seen, x, scale)
        return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    @eqx.filter_jit
    def step(model, opt_state, x, weight, rng, scale, fixed=None):
        loss, grads = eqx.filter_value_and_grad(batch_loss)(model, x, weight, rng, scale, fixed)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    @eqx.filter_jit
    def eval_sum(model, x, weight, scale, fixed=None):
        return jnp.sum(per_sample(model, x, x, scale, *(fixed or ())) * weight)

    return optimiser, (None if features is None else jax.jit(features)), step, eval_sum


@lru_cache(maxsize=1)
def _inference_functions():
    """(encode, reconstruct), jitted once per process (compiled per model structure and shape)."""
    import equinox as eqx

    return eqx.filter_jit(lambda m, x: m.encode(x)), eqx.filter_jit(lambda m, x: m(x))


# -- the trained model --------------------------------------------------------------


class TrainedAE:
    """A trained autoencoder: options, weights (numpy), history, provenance."""

    def __init__(self, options: AEOptions, weights: list[np.ndarray], history: list[dict] | None = None,
                 folder_fingerprint: str = "", opt_state: list[np.ndarray] | None = None,
                 interrupted: bool = False):
        self.options = options
        self.weights = [np.asarray(w) for w in weights]
        self.history = list(history or [])
        self.folder_fingerprint = folder_fingerprint
        self.opt_state = opt_state  # optimiser state of the kept epoch (for resuming)
        self.interrupted = interrupted
        self._model = None

    def __getstate__(self):  # sent to worker processes: numpy arrays only
        state = dict(self.__dict__)
        state.update(_model=None)
        return state

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def model(self):
        if self._model is None:
            self._model = _with_leaves(_skeleton(self.options), self.weights)
        return self._model

    def _run(self, images: np.ndarray, which: str, chunk: int = 128) -> np.ndarray:
        model = self.model()
        encode, reconstruct = _inference_functions()
        fn = encode if which == "encode" else reconstruct
        x = self._check_input(images)
        n = len(x)
        size = min(chunk, max(n, 1))
        outs = []
        for start in range(0, n, size):
            part = x[start:start + size]
            pad = size - len(part)
            if pad:  # one shape per model: no recompiling for the last chunk
                part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], np.float32)])
            outs.append(np.asarray(fn(model, part))[: size - pad])
        if not outs:
            return np.zeros((0, self.options.latent) if which == "encode" else (0,) + x.shape[1:], np.float32)
        return np.concatenate(outs).astype(np.float32)

    def _check_input(self, images: np.ndarray) -> np.ndarray:
        o = self.options
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3 and o.channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (o.input_size, o.input_size, o.channels):
            raise ValueError(f"expected images of shape (n, {o.input_size}, {o.input_size}, {o.channels}), "
                             f"got {x.shape} (use to_input)")
        return np.ascontiguousarray(x)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Latent vectors (n, latent) float32 of images as made by :func:`to_input`."""
        return self._run(images, "encode")

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Reconstructions, (n, size, size, channels) float32 in [0, 1]."""
        return self._run(images, "recon")

    def reconstruction_error(self, images: np.ndarray) -> float:
        """Mean squared pixel error of the reconstructions (pixels in [0, 1])."""
        x = np.asarray(images, np.float32)
        y = self.reconstruct(x).reshape(x.shape)
        return float(np.mean((x - y) ** 2))

    # -- files
    def digest(self) -> str:
        """A hash of the weights and options (what the latents depend on)."""
        h = hashlib.sha256(json.dumps(self.options.to_json(), sort_keys=True).encode())
        for w in self.weights:
            h.update(str(w.shape).encode())
            h.update(np.ascontiguousarray(w).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (an npz file, replaced atomically)."""
        path = Path(path)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "options": self.options.to_json(),
                "history": self.history, "folder_fingerprint": self.folder_fingerprint,
                "interrupted": self.interrupted, "weights": len(self.weights),
                "opt_state": 0 if self.opt_state is None else len(self.opt_state)}
        arrays = {f"w{k}": w for k, w in enumerate(self.weights)}
        if self.opt_state is not None:
            arrays.update({f"o{k}": np.asarray(a) for k, a in enumerate(self.opt_state)})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, prefix=f".{path.name}.", suffix=".part") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainedAE":
        """Read a saved model; ClusterimgError (one line) for a missing,
        corrupt, foreign or other-version file."""
        path = Path(path)
        if not path.is_file():
            raise ClusterimgError(f"autoencoder model not found: {path}", exit_code=2)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode("utf-8"))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise ClusterimgError(f"{path} is not a clusterimg autoencoder model", exit_code=2)
                if meta.get("version") != FORMAT_VERSION:
                    raise ClusterimgError(
                        f"{path} is an autoencoder model of format version {meta.get('version')}; this "
                        f"clusterimg reads version {FORMAT_VERSION} (train it again)", exit_code=2)
                weights = [z[f"w{k}"] for k in range(int(meta["weights"]))]
                opt_state = [z[f"o{k}"] for k in range(int(meta["opt_state"]))] or None
            options = AEOptions.from_json(meta["options"])
            options.check()
            model = cls(options, weights, meta.get("history"), meta.get("folder_fingerprint", ""), opt_state,
                        bool(meta.get("interrupted", False)))
            _with_leaves(_skeleton(options), weights)  # shapes match the options
            return model
        except ClusterimgError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            text = str(e).strip().splitlines()
            raise ClusterimgError(f"cannot read autoencoder model {path}: "
                                  f"{text[0] if text else type(e).__name__}", exit_code=2)


# -- training ---------------------------------------------------------------------


def _split(n: int, options: AEOptions) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices (seeded)."""
    order = np.random.default_rng(options.seed).permutation(n)
    n_val = int(round(n * options.val_fraction))
    if n - n_val < 1 or n_val < 1:
        return np.sort(order), np.zeros(0, np.int64)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train(images: np.ndarray, options: AEOptions, progress: Callable[[EpochReport], None] | None = None,
          resume: TrainedAE | None = None, folder_fingerprint: str = "") -> TrainedAE:
    """Train an autoencoder on ``images`` ((n, S, S, C) float32 in [0, 1], see
    :func:`to_input`). ``progress`` is called after every epoch.

    Keeps the epoch with the lowest validation loss (training loss without a
    validation set) and stops after ``options.patience`` epochs without
    improvement. Ctrl-C returns the best model so far with ``interrupted``
    set (save it, then resume with ``train(..., resume=model)``).
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    options.check()
    x_all = np.ascontiguousarray(np.asarray(images, np.float32).reshape(
        len(images), options.input_size, options.input_size, options.channels))
    n = len(x_all)
    if n < 2:
        raise ValueError("at least 2 images are needed to train an autoencoder")
    train_idx, val_idx = _split(n, options)
    batch = min(options.batch_size, len(train_idx))

    optimiser, features, step, eval_sum = _training_functions(_trace_key(options))
    scale = jnp.float32(1.0)
    if options.loss == "perceptual":
        sample = x_all[train_idx[:: max(1, len(train_idx) // 256)]]
        scale = jnp.float32(max(float(np.var(np.asarray(features(jnp.asarray(sample))))), 1e-6))
    if resume is not None:
        model = resume.model()
        opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
        if resume.opt_state is not None:
            opt_state = _with_leaves_tree(opt_state, resume.opt_state)
        history = list(resume.history)
    else:
        model = _build(options, jax.random.PRNGKey(options.seed))
        opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
        history = []

    def batches(idx):
        """Fixed-size batches (the last one padded, with zero weight): images,
        weights, and their precomputed fixed parts (or None)."""
        for xb, weight, part in _chunks(x_all, idx, batch):
            yield xb, weight, (None if fixed is None else tuple(None if a is None else a[part] for a in fixed))

    # Without augmentation or noise the network sees the images themselves, so
    # what does not change during training is computed once here, not every
    # step: the frozen EfficientNet front of the effnet encoder and the
    # perceptual features of the targets (2 of the 3 EfficientNet passes).
    fixed = None
    if not options.augment and options.denoise == 0 and (options.encoder == "effnet" or features is not None):
        front = eqx.filter_jit(lambda m, x: m.front(x)) if options.encoder == "effnet" else None
        fronts, targets = [], []
        for xb, w, _ in _chunks(x_all, np.arange(n), batch):
            keep = int(w.sum())
            if front is not None:
                fronts.append(np.asarray(front(model, xb))[:keep])
            if features is not None:
                targets.append(np.asarray(features(jnp.asarray(xb)))[:keep])
        fixed = (np.concatenate(fronts) if fronts else None, np.concatenate(targets) if targets else None)

    def evaluate(model, idx) -> float:
        total = sum(float(eval_sum(model, xb, w, scale, f)) for xb, w, f in batches(idx))
        return total / len(idx)

    best_model, best_state = model, opt_state
    best = min((h["val_loss"] if h["val_loss"] is not None else h["loss"] for h in history), default=math.inf)
    since_best = 0
    first_epoch = len(history)
    interrupted = False
    times: list[float] = []
    base_key = jax.random.PRNGKey(options.seed + 1)
    try:
        for epoch in range(first_epoch, options.epochs):
            t0 = time.perf_counter()
            order = np.random.default_rng([options.seed, epoch]).permutation(train_idx)
            total, count = 0.0, 0
            for k, (xb, w, f) in enumerate(batches(order)):
                key = jax.random.fold_in(jax.random.fold_in(base_key, epoch), k)
                model, opt_state, loss = step(model, opt_state, xb, w, key, scale, f)
                total += float(loss) * float(w.sum())
                count += float(w.sum())
            train_loss = total / max(count, 1.0)
            val_loss = evaluate(model, val_idx) if len(val_idx) else None
            watched = val_loss if val_loss is not None else train_loss
            improved = watched < best
            if improved:
                best, best_model, best_state, since_best = watched, model, opt_state, 0
            else:
                since_best += 1
            seconds = time.perf_counter() - t0
            times.append(seconds)
            history.append({"epoch": epoch + 1, "loss": train_loss, "val_loss": val_loss,
                            "seconds": round(seconds, 3)})
            if progress is not None:
                typical = float(np.median(times[1:] if len(times) > 1 else times))
                progress(EpochReport(epoch + 1, options.epochs, train_loss, val_loss, seconds,
                                     typical * (options.epochs - epoch - 1), improved))
            if since_best >= options.patience:
                break
    except KeyboardInterrupt:
        interrupted = True
    # history keeps every epoch run; the weights are those of the best one
    return TrainedAE(options, _leaves(best_model), history, folder_fingerprint,
                     _leaves(best_state), interrupted=interrupted)


def _chunks(x_all: np.ndarray, idx: np.ndarray, size: int):
    """(images, weights, their indices) in chunks of ``size`` (the last one
    padded with copies of its first image, weight 0)."""
    for start in range(0, len(idx), size):
        part = idx[start:start + size]
        weight = np.ones(size, np.float32)
        if len(part) < size:
            weight[len(part):] = 0
            part = np.concatenate([part, np.full(size - len(part), part[0])])
        yield x_all[part], weight, part


def _with_leaves_tree(tree, arrays: Sequence[np.ndarray]):
    """A pytree of arrays (optimiser state) with its leaves replaced."""
    import jax
    import jax.numpy as jnp

    flat, treedef = jax.tree_util.tree_flatten(tree)
    if len(flat) != len(arrays) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(flat, arrays)):
        raise ValueError("the saved optimiser state does not fit this model")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(b, dtype=a.dtype) for a, b in zip(flat, arrays)])
