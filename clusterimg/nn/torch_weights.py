"""Read a PyTorch ``.pth`` state dict into numpy arrays without torch.

A ``.pth`` file is a pickle, and unpickling runs whatever the file names, so
it is read with a restricted unpickler: the only globals it resolves are
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` /
``_rebuild_tensor`` (mapped to a function here that builds a numpy view) and
the ``torch.*Storage`` type markers. Anything else in the file is refused with
a :class:`~clusterimg.errors.ClusterimgError`, so no code from a file ever runs.

Two layouts exist and both are read:

- zip (torch >= 1.6): ``<prefix>/data.pkl`` plus one raw file per storage
  under ``<prefix>/data/<key>`` (and ``<prefix>/byteorder`` in newer files);
- legacy: a magic number, the protocol version and system info pickles, the
  object pickle, a pickle of the storage keys, then each storage as an int64
  element count followed by its raw bytes, in the order of those keys.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from clusterimg.errors import ClusterimgError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype ("bfloat16" is widened by hand)
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class named in the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """A storage named by a persistent id; its bytes are attached later (legacy
    layout) or read at once (zip layout)."""

    def __init__(self, stype: _StorageType, key: str, numel: int):
        self.stype, self.key, self.numel = stype, key, numel
        self.array: np.ndarray | None = None

    def set_bytes(self, data: bytes, big_endian: bool = False) -> None:
        if self.stype.dtype == "bfloat16":
            raw = np.frombuffer(data, dtype=">u2" if big_endian else "<u2")
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            dt = np.dtype(self.stype.dtype)
            arr = np.frombuffer(data, dtype=dt.newbyteorder(">") if big_endian and dt.itemsize > 1 else dt)
        self.array = arr


class _StorageView:
    """A legacy-layout view into another storage (``view_metadata``)."""

    def __init__(self, base: _Storage, offset: int, size: int):
        self.base, self.offset, self.size = base, offset, size

    @property
    def array(self) -> np.ndarray | None:
        if self.base.array is None:
            return None
        return self.base.array[self.offset : self.offset + self.size]


class _Tensor:
    """A tensor whose storage bytes may not be known yet; made an array at the end."""

    def __init__(self, storage, offset: int, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise ClusterimgError(f"weights file is damaged: storage {self.storage_key()} has no data")
        n = 1
        for s in self.size:
            n *= s
        if n == 0:
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        if self.offset < 0 or last >= len(data) or any(st < 0 for st in self.stride):
            raise ClusterimgError("weights file is damaged: a tensor lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(st * data.itemsize for st in self.stride))
        return np.array(view)  # own, contiguous, native byte order copy

    def storage_key(self) -> str:
        s = self.storage
        return getattr(s, "key", None) or getattr(getattr(s, "base", None), "key", "?")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; refuses everything else."""

    def __init__(self, file, storages: dict[str, _Storage], zip_reader=None):
        super().__init__(file)
        self.storages = storages
        self.zip_reader = zip_reader  # key -> bytes, for the zip layout

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ClusterimgError(f"weights file refused: it names {module}.{name}, which a plain state dict "
                              f"of tensors never does (possibly malicious)")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise ClusterimgError("weights file refused: unexpected persistent reference")
        stype, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(stype, _StorageType):
            raise ClusterimgError("weights file refused: a storage of an unknown type")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(stype, key, int(numel))
            if self.zip_reader is not None:
                storage.set_bytes(self.zip_reader(key), big_endian=self.zip_reader.big_endian)
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            _view_key, offset, size = view
            return _StorageView(storage, int(offset), int(size))
        return storage


class _ZipReader:
    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        self.archive, self.prefix = archive, prefix
        try:
            order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        except KeyError:
            order = "little"
        self.big_endian = order == "big"

    def __call__(self, key: str) -> bytes:
        try:
            return self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise ClusterimgError(f"weights file is damaged: storage {key} is missing from the archive")


def _collect(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Tensors of a (possibly nested) dict as name -> array; other values are dropped."""
    if isinstance(obj, _Tensor):
        out[prefix] = obj.to_numpy()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _collect(v, f"{prefix}.{k}" if prefix else str(k), out)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkls:
            raise ClusterimgError(f"{path}: not a PyTorch weights file (a zip without data.pkl)")
        name = min(pkls, key=len)
        prefix = name[: -len("data.pkl")]
        reader = _ZipReader(archive, prefix)
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(name)), {}, zip_reader=reader)
        obj = unpickler.load()
        out: dict[str, np.ndarray] = {}
        _collect(obj, "", out)
        return out


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        def plain_load():
            return _RestrictedUnpickler(f, {}).load()

        magic = plain_load()
        if magic != LEGACY_MAGIC:
            raise ClusterimgError(f"{path}: not a PyTorch weights file (wrong magic number)")
        if plain_load() != LEGACY_PROTOCOL:
            raise ClusterimgError(f"{path}: unsupported PyTorch file protocol")
        sys_info = plain_load()
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(f, storages).load()
        keys = plain_load()
        if not isinstance(keys, list):
            raise ClusterimgError(f"{path}: weights file is damaged (no storage list)")
        for key in keys:
            storage = storages.get(str(key))
            head = f.read(8)
            if len(head) != 8:
                raise ClusterimgError(f"{path}: weights file is truncated")
            numel = struct.unpack("<q" if little else ">q", head)[0]
            itemsize = storage.stype.itemsize if storage is not None else 1
            nbytes = numel * itemsize
            if numel < 0 or nbytes > os.path.getsize(path):
                raise ClusterimgError(f"{path}: weights file is damaged (bad storage size)")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ClusterimgError(f"{path}: weights file is truncated")
            if storage is not None:
                storage.set_bytes(data, big_endian=not little)
        out: dict[str, np.ndarray] = {}
        _collect(obj, "", out)
        return out


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch ``.pth`` file as ``{name: numpy array}``.

    Nested dicts (e.g. ``{"state_dict": {...}}``) give dotted names; entries
    that are not tensors are left out. Raises ClusterimgError with a one-line
    message for a missing, damaged or refused (code-carrying) file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ClusterimgError(f"weights file not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            out = _load_zip(path)
        else:
            out = _load_legacy(path)
    except ClusterimgError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            struct.error, zipfile.BadZipFile, OSError, MemoryError) as e:
        raise ClusterimgError(f"{path}: cannot read PyTorch weights ({type(e).__name__}: {e})")
    if not out:
        raise ClusterimgError(f"{path}: no tensors found in the weights file")
    return out
