"""The autoencoder feature: training, saving, loading, the perceptual loss's
feature extractor, the backend and the train-ae command (tiny, fast runs)."""
from __future__ import annotations

import json
import os

# These runs are tiny: XLA's compile of each training step costs far more than
# running it. LLVM at -O0 compiles about 3x faster (set before jax starts).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clusterimg.errors import ClusterimgError
from clusterimg.nn.autoencoder import FORMAT_VERSION, AEOptions, TrainedAE, to_input, train


def shapes(n: int = 32, size: int = 32, rgb: bool = False, seed: int = 0) -> np.ndarray:
    """Images of bright discs, squares and bars on dark noise (uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for k in range(n):
        im = rng.uniform(0, 40, (size, size))
        cy, cx, r = rng.uniform(size * 0.3, size * 0.7, 2).tolist() + [rng.uniform(size * 0.15, size * 0.3)]
        kind = k % 3
        if kind == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        elif kind == 1:
            mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
        else:
            mask = abs(xx - cx) < r / 3
        im[mask] = rng.uniform(150, 255)
        im = im.astype(np.uint8)
        if rgb:
            im = np.stack([im, im // 2 + 60 * (kind == 1), 255 - im], axis=2).astype(np.uint8)
        out.append(im)
    return np.stack(out)


# One set of options for most runs: training functions are compiled once per
# process and options (see _training_functions), so the tests share compiles.
# The conv encoder here (the default, effnet, has its own tests): fast to compile.
OPTS = dict(input_size=32, latent=8, epochs=2, batch_size=8, lr=1e-3, encoder="conv")


@pytest.fixture(scope="module")
def gray_data():
    return to_input(list(shapes()), 32, 1)


@pytest.fixture(scope="module")
def mse_model(gray_data):
    return train(gray_data, AEOptions(channels=1, loss="mse", **OPTS))


@pytest.mark.parametrize("loss", ["mse", "l1", "perceptual"])
def test_training_lowers_the_loss(loss, gray_data, mse_model):
    if loss == "mse":
        model, x = mse_model, gray_data
    else:  # perceptual on RGB input: the EfficientNet stem takes three channels
        channels = 3 if loss == "perceptual" else 1
        x = to_input(list(shapes(rgb=channels == 3)), 32, channels)
        model = train(x, AEOptions(channels=channels, loss=loss, **OPTS))
    h = model.history
    assert len(h) == 2 and model.epochs_done == 2
    assert h[1]["loss"] < h[0]["loss"]
    assert h[1]["val_loss"] < h[0]["val_loss"]
    z = model.encode(x)
    assert z.shape == (len(x), 8) and z.dtype == np.float32 and np.isfinite(z).all()


def test_progress_is_reported_per_epoch(gray_data):
    seen = []
    model = train(gray_data, AEOptions(channels=1, loss="mse", **dict(OPTS, epochs=2)), progress=seen.append)
    assert [r.epoch for r in seen] == [1, 2]
    assert seen[-1].eta == 0 and seen[0].eta >= 0
    assert [r.loss for r in seen] == [h["loss"] for h in model.history]


def test_training_is_deterministic(gray_data, mse_model):
    from clusterimg.nn.autoencoder import _training_functions

    compiled = _training_functions.cache_info().currsize
    again = train(gray_data, AEOptions(channels=1, loss="mse", **OPTS))
    assert all(np.array_equal(a, b) for a, b in zip(again.weights, mse_model.weights))
    assert np.array_equal(again.encode(gray_data), mse_model.encode(gray_data))
    other_seed = train(gray_data, AEOptions(channels=1, loss="mse", **dict(OPTS, seed=1, epochs=1)))
    assert not np.array_equal(other_seed.weights[0], mse_model.weights[0])
    assert _training_functions.cache_info().currsize == compiled  # same options: the step was reused


def test_effnet_encoder_with_denoising_trains_and_round_trips(tmp_path, gray_data):
    """The hybrid: frozen EfficientNet-Lite0 stem + blocks, then trained layers;
    its pretrained weights are not part of the saved model."""
    options = AEOptions(channels=1, loss="mse", encoder_blocks=3, denoise=0.1, **dict(OPTS, encoder="effnet"))
    model = train(gray_data, options)
    h = model.history
    assert h[1]["loss"] < h[0]["loss"] and h[1]["val_loss"] < h[0]["val_loss"]
    conv = train(gray_data, AEOptions(channels=1, loss="mse", **dict(OPTS, epochs=1)))
    # two trained stride-2 convolutions (S/4 -> S/16) instead of four; no EfficientNet weight saved
    assert len(model.weights) == len(conv.weights) - 4
    assert model.weights[0].shape == (3, 3, 24, 64)
    path = tmp_path / "eff.ae"
    model.save(path)
    loaded = TrainedAE.load(path)
    assert loaded.options.encoder == "effnet" and loaded.options.denoise == 0.1
    z = loaded.encode(gray_data)
    assert z.shape == (len(gray_data), 8) and np.array_equal(z, model.encode(gray_data))


def test_encode_does_not_depend_on_chunking(gray_data, mse_model):
    whole = mse_model.encode(gray_data)
    assert np.allclose(mse_model.encode(gray_data[:5]), whole[:5], atol=1e-5)


def test_save_load_gives_identical_latents(tmp_path, gray_data, mse_model):
    path = tmp_path / "m.ae"
    mse_model.save(path)
    loaded = TrainedAE.load(path)
    assert loaded.options == mse_model.options
    assert loaded.history == mse_model.history
    assert loaded.digest() == mse_model.digest()
    assert np.array_equal(loaded.encode(gray_data), mse_model.encode(gray_data))
    with np.load(path, allow_pickle=False) as z:  # a plain npz: readable without pickle
        assert json.loads(bytes(z["meta"]).decode())["version"] == FORMAT_VERSION


def one_line_error(path) -> str:
    with pytest.raises(ClusterimgError) as info:
        TrainedAE.load(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_corrupt_foreign_and_other_version_files_give_one_line(tmp_path, mse_model):
    good = tmp_path / "good.ae"
    mse_model.save(good)
    garbage = tmp_path / "garbage.ae"
    garbage.write_bytes(b"this is not a model at all")
    assert "cannot read" in one_line_error(garbage)
    truncated = tmp_path / "truncated.ae"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "cannot read" in one_line_error(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, meta=np.frombuffer(b'{"format": "something-else"}', np.uint8))
    assert "not a clusterimg autoencoder" in one_line_error(foreign)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["version"] = FORMAT_VERSION + 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    newer = tmp_path / "newer.ae"
    with open(newer, "wb") as f:
        np.savez(f, **arrays)
    assert f"version {FORMAT_VERSION + 1}" in one_line_error(newer)
    assert "not found" in one_line_error(tmp_path / "missing.ae")


def test_interrupted_training_keeps_the_best_epoch(gray_data, monkeypatch):
    calls = []

    def stop_in_epoch_two(report):
        calls.append(report.epoch)
        if report.epoch == 2:
            raise KeyboardInterrupt

    model = train(gray_data, AEOptions(channels=1, loss="mse", **dict(OPTS, epochs=4)), progress=stop_in_epoch_two)
    assert model.interrupted and calls == [1, 2]
    assert model.opt_state is not None  # saved with the model, so --resume continues
    resumed = train(gray_data, AEOptions(channels=1, loss="mse", **dict(OPTS, epochs=3)), resume=model)
    assert resumed.epochs_done == 3 and not resumed.interrupted


def test_perceptual_features_match_the_numpy_reference():
    import jax.numpy as jnp

    from clusterimg.nn.effnet_jax import early_features, params_from_state_dict
    from clusterimg.nn.efficientnet import numpy_reference, weights_path
    from clusterimg.nn.torch_weights import load_torch_state_dict

    sd = load_torch_state_dict(weights_path())
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 37, 40)).astype(np.float32)  # odd sizes: SAME padding
    for blocks in (0, 3):
        ref = numpy_reference(sd, x, blocks)
        got = np.asarray(early_features(params_from_state_dict(sd, blocks), jnp.asarray(x.transpose(0, 2, 3, 1))))
        assert got.transpose(0, 3, 1, 2).shape == ref.shape
        np.testing.assert_allclose(got.transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size, k, stride", [((8, 8), 3, 1), ((8, 8), 3, 2), ((7, 9), 3, 2), ((9, 7), 5, 2),
                                             ((10, 11), 5, 1), ((5, 5), 5, 2)])
def test_the_depthwise_gradient_is_the_true_gradient(size, k, stride):
    # depthwise() carries a hand-written gradient (the perceptual loss's
    # speed); it must equal JAX's own gradient of the same correlation.
    import jax
    import jax.numpy as jnp

    from clusterimg.nn import effnet_jax as E
    from clusterimg.nn.efficientnet import same_pads

    def plain(x, w, b):
        (top, bottom, ho), (left, right, wo) = same_pads(size[0], k, stride), same_pads(size[1], k, stride)
        return E._correlate(jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))), w, stride, ho, wo) + b

    rng = np.random.default_rng(k * 10 + stride)
    x, w, b = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((2, *size, 4), (k, k, 4), (4,)))
    cotangent = jnp.asarray(rng.normal(size=plain(x, w, b).shape), jnp.float32)
    np.testing.assert_allclose(E.depthwise(x, w, b, stride), plain(x, w, b), rtol=1e-6, atol=1e-6)
    ours = jax.grad(lambda *a: jnp.sum(E.depthwise(*a, stride) * cotangent), argnums=(0, 1, 2))(x, w, b)
    theirs = jax.grad(lambda *a: jnp.sum(plain(*a) * cotangent), argnums=(0, 1, 2))(x, w, b)
    for a, b_ in zip(ours, theirs):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)


def write_folder(folder, n=24, rgb=False):
    folder.mkdir()
    for k, im in enumerate(shapes(n, 32, rgb=rgb)):
        Image.fromarray(im).save(folder / f"img_{k:02d}.png")
    return sorted(str(p) for p in folder.iterdir())


def test_backend_trains_once_then_reuses_and_keys_on_the_model(tmp_path):
    from clusterimg.cache import method_key
    from clusterimg.features.autoencoder import Autoencoder

    paths = write_folder(tmp_path / "imgs")
    fast = dict(latent=8, input_size=32, loss="mse", encoder="conv")
    first = Autoencoder(epochs=1, **fast)
    first.model_dir = tmp_path / "models"
    first.prepare(paths)
    assert "trained" in first.status and len(list((tmp_path / "models").iterdir())) == 1
    second = Autoencoder(epochs=1, **fast)
    second.model_dir = tmp_path / "models"
    second.prepare(paths)
    assert "reused" in second.status
    assert second.params["model"] == first.params["model"] == first.model.digest()
    images = [second.decode(p) for p in paths[:3]]
    feats = second.extract_many(images)
    assert np.array_equal(np.stack(feats), first.model.encode(to_input(images, 32, first.model.options.channels)))
    assert np.allclose(second.extract(images[0]), feats[0], atol=1e-5)
    retrained = Autoencoder(epochs=2, retrain=True, **fast)  # same compiled step, other model
    retrained.model_dir = tmp_path / "models"
    retrained.prepare(paths)
    assert "trained" in retrained.status
    assert method_key(retrained) != method_key(second)  # other model, other feature cache key
    assert Autoencoder(encoder="conv").training_options(1).encoder == "conv"  # --encoder reaches training
    saved = tmp_path / "given.ae"
    first.model.save(saved)
    given = Autoencoder(ae=str(saved))
    given.prepare(paths)
    assert given.params["model"] == first.params["model"] and given.params["latent"] == 8


def test_train_ae_command(tmp_path):
    from clusterimg.cli import main

    write_folder(tmp_path / "imgs", rgb=True)
    save = tmp_path / "m.ae"
    args = ["train-ae", str(tmp_path / "imgs"), "--save", str(save), "--epochs", "2", "--latent", "8",
            "--input-size", "32", "--batch-size", "8", "--loss", "perceptual"]
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(main, args + ["--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output and "ETA" in result.output
    assert TrainedAE.load(save).options.channels == 3
    assert (tmp_path / "plots" / "loss_curves.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "reconstructions.png").stat().st_size > 1000
    before = save.read_bytes()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "exists" in again.output and save.read_bytes() == before
    bad = CliRunner().invoke(main, args[:3] + [str(tmp_path / "new.ae"), "--input-size", "40"])
    assert bad.exit_code == 2 and "multiple of 16" in bad.output


def test_defaults_agree_between_the_library_run_and_train_ae():
    """One default setting (the one measured best, README) wherever a model is trained."""
    from clusterimg.cli import main
    from clusterimg.features.autoencoder import Autoencoder

    library = AEOptions()
    backend = Autoencoder().training_options(library.channels)
    command = {p.name: p.default for p in main.commands["train-ae"].params}
    for name in ("loss", "encoder", "latent", "epochs", "input_size"):
        assert getattr(backend, name) == getattr(library, name) == command[name], name
    assert (library.loss, library.encoder, library.latent) == ("perceptual", "effnet", 10)
