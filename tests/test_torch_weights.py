"""The torch-free .pth reader: tensors of both file layouts come back as the
right arrays, and a pickle that names anything but tensor pieces is refused
without running it."""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from clusterimg.errors import ClusterimgError
from clusterimg.nn.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, load_torch_state_dict


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-ins whose module/name are what torch writes into a .pth, so that
    pickle records exactly those globals (torch itself is not installed)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only written, never called")

    for cls in (FloatStorage, LongStorage):
        cls.__module__, cls.__qualname__ = "torch", cls.__name__
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, torch.LongStorage, torch._utils = FloatStorage, LongStorage, utils
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class Storage:
    def __init__(self, key, stype, data: np.ndarray):
        self.key, self.stype, self.data = key, stype, data


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (*self.args, False, collections.OrderedDict())


class TorchLikePickler(pickle.Pickler):
    def __init__(self, file, legacy=False):
        super().__init__(file, protocol=2)
        self.legacy, self.seen = legacy, []

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            if obj.key not in [s.key for s in self.seen]:
                self.seen.append(obj)
            pid = ("storage", obj.stype, obj.key, "cpu", obj.data.size)
            return pid + (None,) if self.legacy else pid
        return None


def example(torch):
    """A state dict with a plain, a transposed-with-offset, and an int tensor,
    two of them sharing one storage; and the arrays they must load as."""
    shared = Storage("0", torch.FloatStorage, np.arange(20, dtype=np.float32) * 0.5)
    ints = Storage("1", torch.LongStorage, np.array([7, -3, 2**40], dtype=np.int64))
    state = collections.OrderedDict([
        ("conv.weight", Tensor(shared, 0, (2, 3), (3, 1))),
        ("conv.weight_t", Tensor(shared, 6, (3, 4), (1, 3))),  # a transposed view at offset 6
        ("steps", Tensor(ints, 1, (2,), (1,))),
    ])
    expected = {
        "conv.weight": shared.data[:6].reshape(2, 3),
        "conv.weight_t": shared.data[6:18].reshape(4, 3).T,
        "steps": np.array([-3, 2**40], dtype=np.int64),
    }
    return state, expected


def write_zip(path, state):
    buf = io.BytesIO()
    pickler = TorchLikePickler(buf)
    pickler.dump(state)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for s in pickler.seen:
            z.writestr(f"archive/data/{s.key}", s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
    return path


def write_legacy(path, state):
    with open(path, "wb") as f:
        for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True, "protocol_version": LEGACY_PROTOCOL}):
            pickle.dump(head, f, protocol=2)
        pickler = TorchLikePickler(f, legacy=True)
        pickler.dump(state)
        keys = [s.key for s in pickler.seen]
        pickle.dump(keys, f, protocol=2)
        for s in pickler.seen:
            f.write(struct.pack("<q", s.data.size))
            f.write(s.data.tobytes())
    return path


@pytest.mark.parametrize("writer", [write_zip, write_legacy], ids=["zip", "legacy"])
def test_state_dict_loads_to_the_right_arrays(tmp_path, fake_torch, writer):
    state, expected = example(fake_torch)
    path = writer(tmp_path / "w.pth", state)
    loaded = load_torch_state_dict(path)
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        assert loaded[name].dtype == want.dtype
        np.testing.assert_array_equal(loaded[name], want)
    # the arrays are copies, independent of each other
    loaded["conv.weight"][0, 0] = 99
    assert loaded["conv.weight_t"][0, 0] == expected["conv.weight_t"][0, 0]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_code_in_the_pickle_is_refused_and_not_run(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": Evil(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
    else:
        with open(path, "wb") as f:
            for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
                pickle.dump(head, f, protocol=2)
            f.write(payload)
    with pytest.raises(ClusterimgError) as err:
        load_torch_state_dict(path)
    assert "refused" in str(err.value) and "system" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_non_torch_and_missing_files_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 this is not a pickle")
    with pytest.raises(ClusterimgError) as err:
        load_torch_state_dict(junk)
    assert "\n" not in str(err.value)
    with pytest.raises(ClusterimgError, match="not found"):
        load_torch_state_dict(tmp_path / "nope.pth")


def test_truncated_legacy_file_is_refused(tmp_path, fake_torch):
    state, _ = example(fake_torch)
    path = write_legacy(tmp_path / "w.pth", state)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ClusterimgError, match="truncated|damaged"):
        load_torch_state_dict(path)
