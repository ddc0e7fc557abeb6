"""Read a legacy (pre-1.6, non-zip) PyTorch ``.pth`` state dict without torch and without trusting the pickle.

A ``.pth`` is a pickle, and a bare ``pickle.load`` runs whatever callable the file names. The weights ship from a
public registry, so the unpickler here resolves only the handful of globals a state dict needs and raises
:class:`~catalens.errors.UnsafePickleError` for anything else (``os.system``, ``builtins.eval``, ...).

Legacy layout, as written by ``torch.save(..., _use_new_zipfile_serialization=False)``::

    pickle(MAGIC_NUMBER) pickle(PROTOCOL_VERSION) pickle(sys_info) pickle(state_dict) pickle(storage_keys)
    then, per key in storage_keys: int64 little-endian element count, raw element bytes

Tensors inside the state-dict pickle reference their storage through persistent ids
``("storage", StorageType, root_key, location, root_numel, view_metadata)`` (``view_metadata`` is ``None`` or
``(view_key, offset, numel)``, a slice of the root storage) and are rebuilt with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``; here they become numpy
arrays viewed with the same offset and strides, then copied, so the values are bit-identical to torch's.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from catalens.errors import ModelError, UnsafePickleError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype (little-endian, as the file's sys_info must confirm).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only a dtype, nothing callable."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A (root) storage named by a persistent id, or a slice of one; the root's bytes come after the pickle."""

    key: str  # the root storage's key
    dtype: np.dtype
    numel: int  # the root storage's element count
    view: tuple[int, int] | None  # (offset, numel) of a legacy storage view into the root, else None


@dataclass(frozen=True)
class _TensorSpec:
    """What ``_rebuild_tensor_v2`` would build: a strided view of a storage."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any) -> _TensorSpec:
    """Our replacement for ``torch._utils._rebuild_tensor_v2``: records the view, checks the argument types."""
    if not isinstance(storage, _StorageRef):
        raise ModelError(f"tensor refers to {type(storage).__name__}, not to a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ModelError(f"bad tensor storage offset {storage_offset!r}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise ModelError(f"bad tensor size/stride {size!r}/{stride!r}")
    if not all(isinstance(v, int) and v >= 0 for v in (*size, *stride)):
        raise ModelError(f"bad tensor size/stride {size!r}/{stride!r}")
    return _TensorSpec(storage, storage_offset, tuple(size), tuple(stride))


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()


class AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and torch's storage persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"weights file asks for global {module}.{name}, which is not on the allow-list"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafePickleError(f"unsupported persistent id {kind!r} (only tensor storages are allowed)")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise ModelError(f"storage {key!r} has unknown type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelError(f"malformed storage reference {pid!r}")
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, str | int) for v in view)):
                raise ModelError(f"malformed storage view {view!r}")
            view = (int(view[1]), int(view[2]))
        return _StorageRef(key, storage_type.dtype, numel, view)


def _load_pickle(stream: BinaryIO) -> Any:
    try:
        return AllowListUnpickler(stream).load()
    except (UnsafePickleError, ModelError):
        raise
    except Exception as exc:  # a truncated or garbled pickle: name the problem, do not leak pickle internals
        raise ModelError(f"malformed weights pickle: {type(exc).__name__}: {exc}") from exc


def _read_storages(stream: BinaryIO, keys: list[str], refs: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    """Read the raw storages that follow the pickles, in the order the key list gives."""
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = refs.get(key)
        if ref is None:
            raise ModelError(f"storage {key!r} is stored but no tensor refers to it")
        header = stream.read(8)
        if len(header) != 8:
            raise ModelError(f"weights file truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != ref.numel:
            raise ModelError(f"storage {key!r}: header says {numel} elements, the pickle says {ref.numel}")
        nbytes = numel * ref.dtype.itemsize
        data = stream.read(nbytes)
        if len(data) != nbytes:
            raise ModelError(f"weights file truncated inside storage {key!r}")
        storages[key] = np.frombuffer(data, dtype=ref.dtype)
    return storages


def _materialise(name: str, spec: _TensorSpec, storages: dict[str, np.ndarray]) -> np.ndarray:
    ref = spec.storage
    base = storages.get(ref.key)
    if base is None:
        raise ModelError(f"tensor {name!r}: storage {ref.key!r} missing from the file")
    if ref.view is not None:
        view_offset, view_numel = ref.view
        if view_offset < 0 or view_numel < 0 or view_offset + view_numel > base.size:
            raise ModelError(f"tensor {name!r}: storage view out of range")
        base = base[view_offset : view_offset + view_numel]
    if any(n == 0 for n in spec.shape):
        return np.zeros(spec.shape, dtype=base.dtype)
    last = spec.offset + sum((n - 1) * s for n, s in zip(spec.shape, spec.strides, strict=True))
    if last >= base.size:
        raise ModelError(f"tensor {name!r}: view reaches element {last}, storage holds {base.size}")
    itemsize = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base[spec.offset :],
        shape=spec.shape,
        strides=tuple(s * itemsize for s in spec.strides),
        writeable=False,
    )
    return np.array(view, dtype=base.dtype.newbyteorder("="), order="C", copy=True)  # own, writable memory


def _collect_refs(state: Any) -> dict[str, _StorageRef]:
    """Root storages by key; two tensors naming one root must agree on its type and size."""
    refs: dict[str, _StorageRef] = {}
    for spec in state.values():
        ref = spec.storage
        known = refs.setdefault(ref.key, ref)
        if (known.dtype, known.numel) != (ref.dtype, ref.numel):
            raise ModelError(f"storage {ref.key!r} is declared with two different types or sizes")
    return refs


def read_legacy_state_dict(stream: BinaryIO) -> dict[str, np.ndarray]:
    """Parse a legacy torch state dict from a binary stream (see :func:`load_legacy_state_dict`)."""
    start = stream.tell()
    if stream.read(4) == b"PK\x03\x04":
        raise ModelError("zip-format .pth (torch >= 1.6 default) is not supported; only the legacy format is")
    stream.seek(start)
    if _load_pickle(stream) != LEGACY_MAGIC_NUMBER:
        raise ModelError("not a legacy torch file (bad magic number); zip-format .pth files are not supported")
    protocol = _load_pickle(stream)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ModelError(f"unsupported legacy torch protocol version {protocol!r}")
    sys_info = _load_pickle(stream)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ModelError(f"weights were saved on a big-endian machine or sys_info is malformed: {sys_info!r}")
    state = _load_pickle(stream)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorSpec) for k, v in state.items()
    ):
        raise ModelError("weights pickle is not a state dict of tensors")
    keys = _load_pickle(stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ModelError("malformed storage key list")
    refs = _collect_refs(state)
    storages = _read_storages(stream, keys, refs)
    if stream.read(1):
        raise ModelError("unexpected bytes after the last storage")
    return {name: _materialise(name, spec, storages) for name, spec in state.items()}


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy (non-zip) ``torch.save`` state dict as numpy arrays, running no code from the file.

    Raises
    ------
    UnsafePickleError
        The file names a global outside the allow-list (code ``unsafe_pickle``).
    ModelError
        The file is not a legacy torch state dict, is truncated, or its tensors do not fit their storages.
    """
    data = Path(path).read_bytes()
    return read_legacy_state_dict(io.BytesIO(data))
