"""The legacy .pth reader: bit-exact with torch on the real weights, and it never runs code a file asks for."""

from __future__ import annotations

import collections
import hashlib
import importlib
import io
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from catalens.errors import ModelError, UnsafePickleError
from catalens_tools.model.build import WEIGHTS
from catalens_tools.model.torch_pickle import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    load_legacy_state_dict,
    read_legacy_state_dict,
)

GOLDEN = Path(__file__).parent / "golden"
SYS_INFO = {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"long": 8}}


# ---------------------------------------------------------------------------------------------------------------------
# A tiny legacy-format writer, so tests can make files with views, offsets and hostile payloads without torch.


class _FakeStorage:
    def __init__(self, key: str, type_name: str, values: np.ndarray) -> None:
        self.key, self.type_name, self.values = key, type_name, values


class _FakeStorageView:
    """A legacy storage view: a slice of a root storage, as old torch wrote for ``storage[a:b]``."""

    def __init__(self, root: _FakeStorage, key: str, offset: int, size: int) -> None:
        self.root, self.key, self.offset, self.size = root, key, offset, size


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> None:
        self.args = (storage, offset, shape, strides, False, collections.OrderedDict())

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Modules named ``torch`` / ``torch._utils`` so pickle writes the same GLOBAL opcodes torch.save writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError("the reader must not call torch")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            storage_type = getattr(sys.modules["torch"], obj.type_name)
            return ("storage", storage_type, obj.key, "cpu", obj.values.size, None)
        if isinstance(obj, _FakeStorageView):
            storage_type = getattr(sys.modules["torch"], obj.root.type_name)
            root = obj.root
            return ("storage", storage_type, root.key, "cpu", root.values.size, (obj.key, obj.offset, obj.size))
        return None


def legacy_bytes(state: dict, storages: list[_FakeStorage], *, main_pickle: bytes | None = None) -> bytes:
    out = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, SYS_INFO):
        pickle.dump(header, out, protocol=2)
    if main_pickle is None:
        _LegacyPickler(out, protocol=2).dump(collections.OrderedDict(state))
    else:
        out.write(main_pickle)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for storage in storages:
        out.write(np.int64(storage.values.size).tobytes())
        out.write(storage.values.tobytes())
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# The real weights


def test_real_weights_are_bit_exact_with_torch() -> None:
    """SHA-256 of every tensor equals what torch.load gave (golden/lite0_weights_sha256.json, see README)."""
    state = load_legacy_state_dict(WEIGHTS["efficientnet-lite0"].path())
    torch_hashes = json.loads((GOLDEN / "lite0_weights_sha256.json").read_text())
    assert sorted(state) == sorted(torch_hashes)
    mismatched = [k for k, v in state.items() if hashlib.sha256(v.tobytes()).hexdigest() != torch_hashes[k]]
    assert mismatched == []
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64


# ---------------------------------------------------------------------------------------------------------------------
# Views: offsets, strides, shared storages


def test_strided_and_offset_views_are_rebuilt_like_torch(fake_torch) -> None:
    base = np.arange(24, dtype=np.float32)
    longs = np.array([7, -3, 2**40], dtype=np.int64)
    s_float, s_long = _FakeStorage("100", "FloatStorage", base), _FakeStorage("200", "LongStorage", longs)
    state = {
        "plain": _FakeTensor(s_float, 0, (2, 3, 4), (12, 4, 1)),
        "transposed": _FakeTensor(s_float, 0, (4, 6), (1, 4)),  # a .t() of a [6, 4] tensor
        "offset": _FakeTensor(s_float, 5, (3,), (2,)),  # base[5:11:2]
        "broadcast": _FakeTensor(s_float, 1, (2, 2), (0, 1)),  # stride 0, as expand() makes
        "longs": _FakeTensor(s_long, 1, (2,), (1,)),
        "empty": _FakeTensor(s_float, 0, (0, 4), (4, 1)),
    }
    loaded = read_legacy_state_dict(io.BytesIO(legacy_bytes(state, [s_float, s_long])))
    np.testing.assert_array_equal(loaded["plain"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(loaded["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(loaded["offset"], base[5:11:2])
    np.testing.assert_array_equal(loaded["broadcast"], [[1, 2], [1, 2]])
    np.testing.assert_array_equal(loaded["longs"], [-3, 2**40])
    assert loaded["empty"].shape == (0, 4)
    assert all(a.flags.c_contiguous and a.flags.owndata for a in loaded.values() if a.size)
    loaded["offset"][0] = 99  # copies, not views into one buffer
    assert loaded["plain"].ravel()[5] == 5


def test_legacy_storage_views_slice_their_root(fake_torch) -> None:
    root = _FakeStorage("7", "FloatStorage", np.arange(10, dtype=np.float32))
    view = _FakeStorageView(root, "8", 4, 6)
    state = {"whole": _FakeTensor(root, 0, (10,), (1,)), "sliced": _FakeTensor(view, 1, (2, 2), (2, 1))}
    loaded = read_legacy_state_dict(io.BytesIO(legacy_bytes(state, [root])))
    np.testing.assert_array_equal(loaded["sliced"], [[5, 6], [7, 8]])
    bad = {"sliced": _FakeTensor(_FakeStorageView(root, "9", 8, 6), 0, (1,), (1,))}
    with pytest.raises(ModelError, match="storage view out of range"):
        read_legacy_state_dict(io.BytesIO(legacy_bytes(bad, [root])))


def test_view_past_the_end_of_its_storage_is_refused(fake_torch) -> None:
    storage = _FakeStorage("1", "FloatStorage", np.zeros(6, np.float32))
    data = legacy_bytes({"w": _FakeTensor(storage, 2, (2, 3), (3, 1))}, [storage])
    with pytest.raises(ModelError, match="view reaches element 7"):
        read_legacy_state_dict(io.BytesIO(data))


def test_truncated_file_and_bad_magic_raise_model_error(fake_torch) -> None:
    storage = _FakeStorage("1", "FloatStorage", np.arange(10, dtype=np.float32))
    data = legacy_bytes({"w": _FakeTensor(storage, 0, (10,), (1,))}, [storage])
    with pytest.raises(ModelError, match="truncated"):
        read_legacy_state_dict(io.BytesIO(data[:-4]))
    with pytest.raises(ModelError, match="unexpected bytes"):
        read_legacy_state_dict(io.BytesIO(data + b"\0"))
    with pytest.raises(ModelError, match="magic"):
        read_legacy_state_dict(io.BytesIO(pickle.dumps(12345, protocol=2) + data))
    with pytest.raises(ModelError, match="zip-format"):
        read_legacy_state_dict(io.BytesIO(b"PK\x03\x04 a zip-format .pth"))


def test_storage_size_mismatch_is_refused(fake_torch) -> None:
    storage = _FakeStorage("1", "FloatStorage", np.arange(4, dtype=np.float32))
    data = bytearray(legacy_bytes({"w": _FakeTensor(storage, 0, (4,), (1,))}, [storage]))
    header_at = len(data) - 16 - 8
    data[header_at : header_at + 8] = np.int64(3).tobytes()
    with pytest.raises(ModelError, match="header says 3 elements"):
        read_legacy_state_dict(io.BytesIO(bytes(data)))


# ---------------------------------------------------------------------------------------------------------------------
# Hostile pickles: nothing outside the allow-list is ever resolved, so nothing runs


class _Evil:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    ("func", "args"),
    [
        (os.system, ("touch {marker}",)),
        (eval, ("open({marker!r}, 'w').close()",)),
        (exec, ("open({marker!r}, 'w').close()",)),
        (open, ("{marker}", "w")),
        (importlib.import_module, ("os",)),
    ],
    ids=["os.system", "builtins.eval", "builtins.exec", "builtins.open", "importlib.import_module"],
)
def test_unpickler_refuses_globals_outside_the_allow_list(tmp_path: Path, func, args) -> None:
    marker = tmp_path / "pwned"
    payload = _Evil(func, *(a.format(marker=str(marker)) if isinstance(a, str) else a for a in args))
    main = pickle.dumps(collections.OrderedDict(w=payload), protocol=2)
    with pytest.raises(UnsafePickleError, match="not on the allow-list") as caught:
        read_legacy_state_dict(io.BytesIO(legacy_bytes({}, [], main_pickle=main)))
    assert caught.value.code == "unsafe_pickle"
    assert not marker.exists()


def test_payload_in_the_header_pickles_is_refused_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError):
        read_legacy_state_dict(io.BytesIO(pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2)))
    assert not marker.exists()


def test_hand_written_protocol_0_global_is_refused() -> None:
    """A raw ``c`` opcode naming subprocess.Popen, as an attacker would write it by hand."""
    payload = b"csubprocess\nPopen\n(S'id'\ntR."
    with pytest.raises(UnsafePickleError, match=r"subprocess\.Popen"):
        read_legacy_state_dict(io.BytesIO(payload))


def test_other_torch_globals_are_not_allowed_either() -> None:
    payload = b"\x80\x02ctorch._utils\n_rebuild_parameter\nq\x00."
    with pytest.raises(UnsafePickleError, match="_rebuild_parameter"):
        read_legacy_state_dict(io.BytesIO(pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2) + payload))


def test_non_storage_persistent_ids_are_refused(fake_torch) -> None:
    class ModulePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "whatever", "source code") if obj == "module-marker" else None

    out = io.BytesIO()
    ModulePickler(out, protocol=2).dump({"m": "module-marker"})
    with pytest.raises(UnsafePickleError, match="persistent id 'module'"):
        read_legacy_state_dict(io.BytesIO(legacy_bytes({}, [], main_pickle=out.getvalue())))


def test_calling_an_allowed_storage_type_does_not_execute_anything(fake_torch) -> None:
    """REDUCE on ``torch.FloatStorage`` (allowed as a type tag) must fail cleanly, not construct anything."""
    payload = b"\x80\x02ctorch\nFloatStorage\nq\x00K\x05\x85R."
    header = b"".join(pickle.dumps(h, protocol=2) for h in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, SYS_INFO))
    with pytest.raises(ModelError, match="malformed weights pickle"):
        read_legacy_state_dict(io.BytesIO(header + payload))
