"""The immutable snapshot of the index and its serialisation to plain arrays.

A snapshot holds, per live item: its id, its unit-norm vector in index space, its fields and
image key (for filtering and display), and the ``source_etag``/``sequencer`` it was built from
(so a later compaction still knows which state is newer); plus the deleted items (tombstones,
for the same reason), the fingerprint of the model that made the vectors, the optional
projection from model to index space, and, for large catalogs, a neighbour graph.

On disk it is a handful of ``.npy`` files and one small JSON (``snapshot.json``) that lists every
file with its size and sha256. Every array loads with ``np.load(..., allow_pickle=False)``;
nothing is pickled. :meth:`Snapshot.from_files` maps the big arrays straight from the given
bytes (read-only, no copy), so loading costs little more than the download.

Rows are stored in the builder's order (the search-tree order pynndescent prefers, which keeps
neighbours close in memory); ``id_order`` sorts them by item id for lookups.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from catalens.errors import CatalensError, ModelError
from catalens.index.filters import Columns, Filter, canonical_json
from catalens.index.graph import GraphSearcher, NeighbourGraph
from catalens.index.records import IndexedItem, ItemRecord
from catalens.index.reduce import Projection, normalise

FORMAT = "catalens-index/1"
META_FILE = "snapshot.json"
_MASK_CACHE_SIZE = 32


class SnapshotError(CatalensError):
    """Snapshot files are missing, corrupt, of an unknown format, or inconsistent with each other."""

    code = "corrupt_snapshot"


@dataclass(frozen=True, eq=False)
class RecordTable:
    """Per-row JSON documents (fields, image key, etag, sequencer, time), concatenated.

    Decoded one row at a time, so a 1M-item snapshot loads without building 1M dicts.
    """

    blob: np.ndarray  # uint8[total]
    offsets: np.ndarray  # int64[n + 1]

    @classmethod
    def encode(cls, documents: Sequence[Mapping[str, Any]]) -> RecordTable:
        encoded = [canonical_json(doc).encode() for doc in documents]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.empty(0, np.uint8)
        return cls(blob, offsets)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def document(self, row: int) -> dict[str, Any]:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return json.loads(self.blob[start:end].tobytes())


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One immutable version of the index. Build it with :func:`catalens.index.build.build_snapshot`."""

    version: str
    model_fingerprint: str
    model_dim: int
    item_ids: np.ndarray  # bytes (UTF-8) dtype "S", [n], in row order
    id_order: np.ndarray  # int64[n]: rows sorted by item id
    vectors: np.ndarray  # float32[n, d_index], unit norm
    records: RecordTable
    columns: Columns
    tombstones: tuple[ItemRecord, ...] = ()
    projection: Projection | None = None
    graph: NeighbourGraph | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", np.ascontiguousarray(self.vectors, dtype=np.float32))
        n = self.item_ids.shape[0]
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n or len(self.records) != n or self.id_order.size != n:
            raise SnapshotError("snapshot arrays disagree on the number of items")
        if self.graph is not None and self.graph.n_vertices != n:
            raise SnapshotError("snapshot graph does not match its vectors")
        expected_dim = self.projection.output_dim if self.projection is not None else self.model_dim
        if n and self.vectors.shape[1] != expected_dim:
            raise SnapshotError(f"snapshot vectors have {self.vectors.shape[1]} dims, expected {expected_dim}")
        object.__setattr__(self, "_mask_cache", OrderedDict())
        object.__setattr__(self, "_mask_lock", threading.Lock())

    # ---- size and identity -------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def dim(self) -> int:
        """Dimensionality of index space (after the projection, if any)."""
        return self.projection.output_dim if self.projection is not None else self.model_dim

    @property
    def field_names(self) -> tuple[str, ...]:
        """Top-level product field names of the live items (recorded by the builder)."""
        return tuple(self.info.get("fields", ()))

    @property
    def generation(self) -> int:
        return int(self.info.get("generation", 0))

    # ---- lookups -----------------------------------------------------------------------
    @cached_property
    def _sorted_ids(self) -> np.ndarray:
        return self.item_ids[self.id_order]

    @cached_property
    def _tombstones_by_id(self) -> dict[str, ItemRecord]:
        return {t.item_id: t for t in self.tombstones}

    def item_id(self, row: int) -> str:
        return self.item_ids[row].decode()

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id, -1 where the snapshot has no live row for it."""
        if not len(item_ids) or not len(self):
            return np.full(len(item_ids), -1, dtype=np.int64)
        keys = np.array([i.encode() for i in item_ids], dtype="S")
        positions = np.searchsorted(self._sorted_ids, keys)
        positions = np.minimum(positions, len(self) - 1)
        found = self._sorted_ids[positions] == keys
        return np.where(found, self.id_order[positions], -1).astype(np.int64)

    def row_of(self, item_id: str) -> int | None:
        row = int(self.rows_of([item_id])[0])
        return None if row < 0 else row

    def tombstone_of(self, item_id: str) -> ItemRecord | None:
        return self._tombstones_by_id.get(item_id)

    def item(self, row: int) -> IndexedItem:
        doc = self.records.document(row)
        return IndexedItem(
            item_id=self.item_id(row),
            vector=self.vectors[row],
            fields=doc["fields"],
            image_key=doc["image_key"],
            source_etag=doc["source_etag"],
            sequencer=doc["sequencer"],
            updated_at=float(doc.get("updated_at", 0.0)),
        )

    def sequencer_of(self, row: int) -> str:
        return self.records.document(row)["sequencer"]

    # ---- query support ---------------------------------------------------------------
    def project(self, query: np.ndarray) -> np.ndarray:
        """A model-space query (float32[d_model]) in index space, unit norm."""
        q = np.asarray(query, dtype=np.float32)
        if q.shape[-1] != self.model_dim:
            raise ModelError(
                f"query vector has {q.shape[-1]} dims but the index was built from {self.model_dim}-dim vectors",
                code="model_mismatch",
            )
        return self.projection.apply(q) if self.projection is not None else normalise(q)

    @cached_property
    def graph_searcher(self) -> GraphSearcher | None:
        return GraphSearcher(self.vectors, self.graph) if self.graph is not None else None

    def filter_mask(self, flt: Filter) -> np.ndarray:
        """bool[n]: rows whose fields pass ``flt`` (cached per filter; read-only)."""
        cache: OrderedDict = self._mask_cache  # type: ignore[attr-defined]
        with self._mask_lock:  # type: ignore[attr-defined]
            if flt in cache:
                cache.move_to_end(flt)
                return cache[flt]
        mask = np.ones(len(self), dtype=bool)
        slow = []
        for condition in flt.conditions:
            column_mask = self.columns.mask(condition)
            if column_mask is None:
                slow.append(condition)
            else:
                mask &= column_mask
        if slow:
            for row in np.flatnonzero(mask):
                fields = self.records.document(int(row))["fields"]
                if not all(c.matches(fields) for c in slow):
                    mask[row] = False
        mask.setflags(write=False)
        with self._mask_lock:  # type: ignore[attr-defined]
            cache[flt] = mask
            while len(cache) > _MASK_CACHE_SIZE:
                cache.popitem(last=False)
        return mask

    # ---- serialisation ---------------------------------------------------------------
    def to_files(self) -> dict[str, bytes]:
        """Serialise to ``{file name: bytes}``: ``.npy`` arrays plus ``snapshot.json`` (written last)."""
        arrays: dict[str, np.ndarray] = {
            "item_ids.npy": self.item_ids,
            "id_order.npy": self.id_order,
            "vectors.npy": self.vectors,
            "records.npy": self.records.blob,
            "record_offsets.npy": self.records.offsets,
        }
        for name, column in self.columns.arrays().items():
            arrays[f"column.{_safe_name(name)}.npy"] = column
        if self.projection is not None:
            for name, array in self.projection.arrays().items():
                arrays[f"projection.{name}.npy"] = array
        if self.graph is not None:
            for name, array in self.graph.arrays().items():
                arrays[f"graph.{name}.npy"] = array
        files = {name: _npy_bytes(array) for name, array in arrays.items()}
        files["tombstones.json"] = canonical_json([_tombstone_doc(t) for t in self.tombstones]).encode()
        meta = {
            "format": FORMAT,
            "version": self.version,
            "model_fingerprint": self.model_fingerprint,
            "model_dim": self.model_dim,
            "dim": self.dim,
            "count": len(self),
            "tombstones": len(self.tombstones),
            "columns": self.columns.describe(),
            "column_files": {name: f"column.{_safe_name(name)}.npy" for name in self.columns.arrays()},
            "projection": self.projection.describe() if self.projection is not None else None,
            "graph": None
            if self.graph is None
            else {
                "vertices": self.graph.n_vertices,
                "edges": int(self.graph.indices.size),
                "entry_points": int(self.graph.entry_points.size),
                "entry_groups": self.graph.n_groups,
                "arrays": sorted(self.graph.arrays()),
            },
            "info": dict(self.info),
            "files": {
                name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for name, data in sorted(files.items())
            },
        }
        files[META_FILE] = json.dumps(meta, sort_keys=True, indent=1).encode()
        return files

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, verify: bool = True) -> Snapshot:
        """Load from the mapping written by :meth:`to_files` (bytes, or memoryviews of them).

        ``verify`` checks each file's sha256 against ``snapshot.json`` (a few hundred MB/s);
        sizes and presence are always checked, so a half-written version is refused.
        """
        if META_FILE not in files:
            raise SnapshotError(f"snapshot has no {META_FILE}")
        try:
            meta = json.loads(bytes(files[META_FILE]))
        except ValueError as exc:
            raise SnapshotError(f"{META_FILE} is not valid JSON: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise SnapshotError(f"unknown snapshot format {meta.get('format')!r} (expected {FORMAT!r})")
        for name, expected in meta["files"].items():
            if name not in files:
                raise SnapshotError(f"snapshot {meta.get('version')} is missing {name}")
            data = files[name]
            if len(data) != expected["bytes"]:
                raise SnapshotError(f"snapshot file {name} has {len(data)} bytes, expected {expected['bytes']}")
            if verify and hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise SnapshotError(f"snapshot file {name} does not match its sha256")

        def array(name: str) -> np.ndarray:
            return _npy_view(files[name], name)

        columns = Columns.from_parts(
            meta["columns"], {key: array(file) for key, file in meta.get("column_files", {}).items()}
        )
        projection = None
        if meta.get("projection"):
            projection = Projection.from_parts(
                meta["projection"], {name: array(f"projection.{name}.npy") for name in ("mean", "components", "scale")}
            )
        graph = None
        if meta.get("graph"):
            names = meta["graph"].get("arrays", ["entry_points", "indices", "indptr"])
            graph = NeighbourGraph(**{name: array(f"graph.{name}.npy") for name in names})
        tombstones = tuple(_tombstone_from_doc(doc) for doc in json.loads(bytes(files["tombstones.json"])))
        vectors = array("vectors.npy")
        if vectors.ndim == 1:  # an empty snapshot saved as shape (0,)
            vectors = vectors.reshape(0, meta["dim"])
        return cls(
            version=meta["version"],
            model_fingerprint=meta["model_fingerprint"],
            model_dim=int(meta["model_dim"]),
            item_ids=array("item_ids.npy"),
            id_order=array("id_order.npy"),
            vectors=vectors,
            records=RecordTable(array("records.npy"), array("record_offsets.npy")),
            columns=columns,
            tombstones=tombstones,
            projection=projection,
            graph=graph,
            info=meta.get("info", {}),
        )

    def nbytes(self) -> int:
        """Total size of the serialised snapshot, in bytes."""
        return sum(len(data) for data in self.to_files().values())


def _safe_name(name: str) -> str:
    """A file-name-safe, collision-free form of a column key such as ``cat:brand``."""
    readable = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return f"{readable}.{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_view(data: bytes | memoryview, name: str) -> np.ndarray:
    """A read-only array over the bytes of a ``.npy`` file, without copying; object arrays refused."""
    stream = io.BytesIO(data)
    try:
        major, _minor = np.lib.format.read_magic(stream)
        if major == 1:
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as exc:
        raise SnapshotError(f"snapshot file {name} is not a .npy array: {exc}") from exc
    if dtype.hasobject:
        raise SnapshotError(f"snapshot file {name} holds Python objects; refusing to unpickle")
    count = math.prod(shape)
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise SnapshotError(f"snapshot file {name} is truncated")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _tombstone_doc(record: ItemRecord) -> dict[str, Any]:
    return {
        "item_id": record.item_id,
        "image_key": record.image_key,
        "source_etag": record.source_etag,
        "sequencer": record.sequencer,
        "updated_at": record.updated_at,
    }


def _tombstone_from_doc(doc: Mapping[str, Any]) -> ItemRecord:
    return ItemRecord(
        item_id=doc["item_id"],
        vector=None,
        fields={},
        image_key=doc["image_key"],
        source_etag=doc["source_etag"],
        sequencer=doc["sequencer"],
        deleted=True,
        updated_at=float(doc["updated_at"]),
    )
