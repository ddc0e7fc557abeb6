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
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from catalens.errors import CatalensError, ModelError
from catalens.index.filters import Columns, Filter, canonical_json
from catalens.index.graph import GraphSearcher, NeighbourGraph
from catalens.index.records import IndexedItem, ItemRecord
from catalens.index.reduce import Projection, normalise
from catalens.index.vectors import CompactVectors, DenseVectors, Stage, VectorTable, is_chunk_file
from catalens.text.lexical import FORMAT as TEXT_FORMAT
from catalens.text.lexical import LexicalIndex

FORMAT = "catalens-index/1"  # float32 vectors: what every release reads
COMPACT_FORMAT = "catalens-index/2"  # compact vectors (catalens.index.vectors): readers from this release on
FORMATS = (FORMAT, COMPACT_FORMAT)
META_FILE = "snapshot.json"
_MASK_CACHE_SIZE = 32
RECORDS_FILE = "records.npy"  # rows as canonical JSON
PACKED_RECORDS_FILE = "records.deflate.npy"  # rows packed by a RecordCodec
RECORD_OFFSETS_FILE = "record_offsets.npy"
RECORD_DICTIONARY_FILE = "records.dictionary.npy"
RECORD_ENCODING = "deflate-dictionary"
DICTIONARY_SAMPLE_ROWS = 256
DICTIONARY_BYTES = 16_384  # 1M placeholder bench rows: a 4 KiB dictionary packs one to 17.5 B, 16 KiB 15.7, 32 KiB 15.2
TEXT_PREFIX = "text."  # the lexical index's arrays: text.<name>.npy (docs/design.md, "Words")


def is_text_file(name: str) -> bool:
    """A file of the snapshot's stored lexical index."""
    return name.startswith(TEXT_PREFIX)


def is_second_stage_file(name: str) -> bool:
    """A file a staged load fetches after the first answer: full-vector chunks and the lexical index."""
    return is_chunk_file(name) or is_text_file(name)


class SnapshotError(CatalensError):
    """Snapshot files are missing, corrupt, of an unknown format, or inconsistent with each other."""

    code = "corrupt_snapshot"


def narrow_index(values: np.ndarray, *, unsigned: bool = False) -> np.ndarray:
    """Row numbers or offsets as int32 (uint32 for offsets) when they fit, else int64: 4 B per item of a search
    process's memory (id order, graph pointers, record offsets). Readers take either width."""
    values = np.asarray(values)
    narrow = np.dtype(np.uint32 if unsigned else np.int32)
    info = np.iinfo(narrow)
    if values.size == 0 or (int(values.min()) >= info.min and int(values.max()) <= info.max):
        return values.astype(narrow, copy=False)
    return values.astype(np.int64, copy=False)


class RecordCodec:
    """Each row's canonical JSON as raw deflate primed with a dictionary of sample rows, one stream per row.

    A row repeats the key names, the field names and most values of its neighbours (a 191-byte record of the bench
    packs to ~69 B, its ETag and sequencer being most of that), yet one row still decodes alone in about a
    microsecond, so a hit reads its record without touching any other.
    """

    def __init__(self, dictionary: bytes, sample_rows: int) -> None:
        self.dictionary = dictionary
        self.sample_rows = sample_rows  # rows the dictionary was learned from: a catalog that outgrows it learns again

    @classmethod
    def learn(cls, rows: Sequence[bytes]) -> RecordCodec:
        """A codec whose dictionary is the canonical JSON of up to ``DICTIONARY_SAMPLE_ROWS`` rows spread over
        ``rows`` (the last ``DICTIONARY_BYTES`` of them: deflate reaches back at most 32 KiB, and the nearer the
        cheaper)."""
        n = len(rows)
        picks = np.unique(np.linspace(0, n - 1, min(n, DICTIONARY_SAMPLE_ROWS)).astype(np.int64)) if n else []
        dictionary = b"".join(rows[int(i)] for i in picks)[-DICTIONARY_BYTES:]
        return cls(dictionary, len(picks))

    @classmethod
    def from_parts(cls, meta: Mapping[str, Any], dictionary: np.ndarray) -> RecordCodec:
        if meta.get("encoding") != RECORD_ENCODING:
            raise SnapshotError(f"unknown record encoding {meta.get('encoding')!r} (expected {RECORD_ENCODING!r})")
        return cls(dictionary.tobytes(), int(meta["sample_rows"]))

    def describe(self) -> dict[str, Any]:
        return {"encoding": RECORD_ENCODING, "sample_rows": self.sample_rows}

    def outgrown(self, rows: int) -> bool:
        """True when a catalog of ``rows`` should learn a new dictionary: this one saw a small catalog (fewer than
        the sample size) that has since at least doubled. Otherwise it stays, so unchanged rows keep their bytes."""
        return self.sample_rows < DICTIONARY_SAMPLE_ROWS and rows >= 2 * max(self.sample_rows, 1)

    @cached_property
    def _compressor(self) -> Any:
        """Primed with the dictionary once, when the builder first packs a row (a search process only decodes)."""
        return zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, self.dictionary)

    def encode(self, row: bytes) -> bytes:
        compressor = self._compressor.copy()  # each row compresses from a copy of the primed state
        return compressor.compress(row) + compressor.flush()

    def decode(self, packed: bytes) -> bytes:
        stream = zlib.decompressobj(-15, zdict=self.dictionary)
        try:
            row = stream.decompress(packed)
        except zlib.error as exc:
            raise SnapshotError(f"a snapshot record does not decode: {exc}") from exc
        if not stream.eof or stream.unused_data:
            raise SnapshotError("a snapshot record does not decode: its stream is cut short or runs on")
        return row


@dataclass(frozen=True, eq=False)
class RecordTable:
    """Per-row JSON documents (fields, image key, etag, sequencer, time), concatenated; each row packed alone by
    ``codec`` (the compact layout) or stored as it is (``codec`` None: the float32 layout and older snapshots).

    Decoded one row at a time, so a 1M-item snapshot loads without building 1M dicts.
    """

    blob: np.ndarray  # uint8[total]
    offsets: np.ndarray  # uint32 (or int64)[n + 1]
    codec: RecordCodec | None = None

    @classmethod
    def encode(cls, documents: Sequence[Mapping[str, Any]]) -> RecordTable:
        """Plain rows: each document's canonical JSON."""
        return cls.from_rows([canonical_json(doc).encode() for doc in documents])

    @classmethod
    def from_rows(cls, rows: Sequence[bytes], codec: RecordCodec | None = None) -> RecordTable:
        """A table of rows already in their stored form (packed by ``codec``, or plain JSON when it is None)."""
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=offsets[1:])
        blob = np.frombuffer(b"".join(rows), dtype=np.uint8) if rows else np.empty(0, np.uint8)
        return cls(blob, narrow_index(offsets, unsigned=True), codec)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def packed(self, row: int) -> bytes:
        """The row's bytes as stored (packed by the codec, if any)."""
        return self.blob[int(self.offsets[row]) : int(self.offsets[row + 1])].tobytes()

    def json(self, row: int) -> bytes:
        """The row's canonical JSON."""
        packed = self.packed(row)
        return packed if self.codec is None else self.codec.decode(packed)

    def document(self, row: int) -> dict[str, Any]:
        try:
            return json.loads(self.json(row))
        except ValueError as exc:  # bytes that are not UTF-8 JSON: a damaged row
            raise SnapshotError(f"a snapshot record does not decode: {exc}") from exc

    def arrays(self) -> dict[str, np.ndarray]:
        """The table's files: the rows under a name an older reader does not know when they are packed (it cannot
        load the version, rather than load it and fail on its first hit), the offsets, the dictionary."""
        if self.codec is None:
            return {RECORDS_FILE: self.blob, RECORD_OFFSETS_FILE: self.offsets}
        dictionary = np.frombuffer(self.codec.dictionary, dtype=np.uint8)
        return {PACKED_RECORDS_FILE: self.blob, RECORD_OFFSETS_FILE: self.offsets, RECORD_DICTIONARY_FILE: dictionary}

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays().values()))


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One immutable version of the index. Build it with :func:`catalens.index.build.build_snapshot`."""

    version: str
    model_fingerprint: str
    model_dim: int
    item_ids: np.ndarray  # bytes (UTF-8) dtype "S", [n], in row order
    id_order: np.ndarray  # int32 (or int64)[n]: rows sorted by item id
    table: VectorTable  # the item vectors, float32 or compact (catalens.index.vectors)
    records: RecordTable
    columns: Columns
    tombstones: tuple[ItemRecord, ...] = ()
    projection: Projection | None = None
    graph: NeighbourGraph | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    # The BM25 index over the rows' words, in row order (None: not stored, or not loaded yet). ``text_files`` names
    # the files the version stores it in; a snapshot with names but no index is waiting for its second stage.
    text: LexicalIndex | None = None
    text_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.table, np.ndarray):
            object.__setattr__(self, "table", DenseVectors(self.table))
        n = self.item_ids.shape[0]
        if len(self.table) != n or len(self.records) != n or self.id_order.size != n:
            raise SnapshotError("snapshot arrays disagree on the number of items")
        if self.graph is not None and self.graph.n_vertices != n:
            raise SnapshotError("snapshot graph does not match its vectors")
        if self.text is not None and len(self.text) != n:
            raise SnapshotError("snapshot lexical index does not match its rows")
        if self.projection is not None and self.table.layout == "compact":
            raise SnapshotError("a compact snapshot keeps index space = model space (no projection)")
        expected_dim = self.projection.output_dim if self.projection is not None else self.model_dim
        if n and self.table.dim != expected_dim:
            raise SnapshotError(f"snapshot vectors have {self.table.dim} dims, expected {expected_dim}")
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
    def stage(self) -> Stage:
        """``full`` when every vector is loaded; ``first`` while a compact snapshot answers from its first stage."""
        return self.table.stage

    @property
    def complete(self) -> bool:
        """True when nothing is left for a second stage (full vectors in, lexical index in or not stored)."""
        return self.stage == "full" and not self.text_pending

    @property
    def text_pending(self) -> bool:
        """The version stores a lexical index that is not loaded yet (text queries must wait for it)."""
        return bool(self.text_files) and self.text is None

    @property
    def vectors(self) -> np.ndarray:
        """Every row's vector as float32[n, d] (tools and tests: a compact snapshot decodes all of them)."""
        if isinstance(self.table, DenseVectors):
            return self.table.vectors
        return self.table.rows(np.arange(len(self)))

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
            vector=self.table.rows(np.array([row]))[0],
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
        if self.graph is None:
            return None
        return GraphSearcher(self.table.first_stage, self.graph, scale=self.table.first_stage_scale)

    def with_table(self, table: VectorTable) -> Snapshot:
        """The same version with its vectors in another stage (a staged load adds the full chunks)."""
        return replace(self, table=table)

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
    def to_files(self) -> SnapshotFiles:
        """Serialise to ``{file name: bytes}``: ``.npy`` arrays plus ``snapshot.json`` (written last).

        The mapping serialises each file when it is read, so writing a 1M-item snapshot holds one file's bytes at
        a time rather than a second copy of the whole snapshot.
        """
        arrays: dict[str, np.ndarray] = {
            "item_ids.npy": self.item_ids,
            "id_order.npy": self.id_order,
            **self.records.arrays(),
            **self.table.arrays(),
        }
        if isinstance(self.table, CompactVectors):
            arrays.update(self.table.chunk_arrays())
        for name, column in self.columns.arrays().items():
            arrays[f"column.{_safe_name(name)}.npy"] = column
        if self.projection is not None:
            for name, array in self.projection.arrays().items():
                arrays[f"projection.{name}.npy"] = array
        if self.graph is not None:
            for name, array in self.graph.arrays().items():
                arrays[f"graph.{name}.npy"] = array
        if self.text is not None:
            for name, array in self.text.to_arrays().items():
                arrays[f"{TEXT_PREFIX}{name}.npy"] = array
        files = SnapshotFiles(arrays)
        files.add("tombstones.json", canonical_json([_tombstone_doc(t) for t in self.tombstones]).encode())
        compact = isinstance(self.table, CompactVectors)
        meta = {
            "format": COMPACT_FORMAT if compact else FORMAT,
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
            "files": {name: files.describe(name) for name in sorted(files)},
        }
        if compact:  # format 1 snapshots keep their bytes: an older reader can still load a float32 version
            meta["vectors"] = self.table.describe()
        if self.records.codec is not None:  # absent for plain rows, so those snapshots keep their bytes
            meta["records"] = self.records.codec.describe()
        if self.text is not None:  # absent, not null: a snapshot without one keeps its bytes
            meta["text"] = {"format": TEXT_FORMAT, "arrays": sorted(self.text.to_arrays())}
        files.add(META_FILE, json.dumps(meta, sort_keys=True, indent=1).encode())
        return files

    @classmethod
    def from_files(
        cls, files: Mapping[str, bytes | memoryview], *, verify: bool = True, first_stage: bool = False
    ) -> Snapshot:
        """Load from the mapping written by :meth:`to_files` (bytes, or memoryviews of them).

        ``verify`` checks each file's sha256 against ``snapshot.json`` (a few hundred MB/s);
        sizes and presence are always checked, so a half-written version is refused. With ``first_stage`` a
        compact snapshot may come without its full-vector chunks (:func:`~catalens.index.vectors.is_chunk_file`):
        it then answers from its first stage until :meth:`with_full_vectors` adds them; its lexical index
        (:func:`is_text_file`) may be missing too, and text queries wait for the same call.
        """
        if META_FILE not in files:
            raise SnapshotError(f"snapshot has no {META_FILE}")
        try:
            meta = json.loads(bytes(files[META_FILE]))
        except ValueError as exc:
            raise SnapshotError(f"{META_FILE} is not valid JSON: {exc}") from exc
        if meta.get("format") not in FORMATS:
            raise SnapshotError(f"unknown snapshot format {meta.get('format')!r} (expected one of {FORMATS})")
        for name, expected in meta["files"].items():
            if name not in files:
                if first_stage and is_second_stage_file(name):
                    continue
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
        table: VectorTable
        if meta["format"] == COMPACT_FORMAT:
            try:
                table = CompactVectors.from_parts(meta["vectors"], array, list(files))
            except ValueError as exc:
                raise SnapshotError(f"snapshot {meta.get('version')}: {exc}") from exc
        else:
            vectors = array("vectors.npy")
            if vectors.ndim == 1:  # an empty snapshot saved as shape (0,)
                vectors = vectors.reshape(0, meta["dim"])
            table = DenseVectors(vectors)
        text_files: tuple[str, ...] = ()
        text = None
        if meta.get("text"):
            if meta["text"].get("format") != TEXT_FORMAT:
                raise SnapshotError(f"unknown lexical index format {meta['text'].get('format')!r}")
            text_files = tuple(f"{TEXT_PREFIX}{name}.npy" for name in meta["text"]["arrays"])
            if all(name in files for name in text_files):
                text = _text_index(files, text_files, meta.get("version"))
        return cls(
            version=meta["version"],
            model_fingerprint=meta["model_fingerprint"],
            model_dim=int(meta["model_dim"]),
            item_ids=array("item_ids.npy"),
            id_order=array("id_order.npy"),
            table=table,
            records=_record_table(meta, array),
            columns=columns,
            tombstones=tombstones,
            projection=projection,
            graph=graph,
            info=meta.get("info", {}),
            text=text,
            text_files=text_files,
        )

    def with_full_vectors(self, files: Mapping[str, bytes | memoryview]) -> Snapshot:
        """This first-stage snapshot with its second stage: full-vector chunks and lexical index (``file name ->
        bytes``, :meth:`second_stage_files`, verified by the caller against the manifest)."""
        snapshot = self
        if isinstance(self.table, CompactVectors) and self.table.stage == "first":
            try:
                snapshot = self.with_table(
                    self.table.with_chunks([_npy_view(files[name], name) for name in self.chunk_files()])
                )
            except (KeyError, ValueError) as exc:
                raise SnapshotError(f"snapshot {self.version}: full-vector chunks do not fit: {exc}") from exc
        if self.text_pending:
            missing = [name for name in self.text_files if name not in files]
            if missing:
                raise SnapshotError(f"snapshot {self.version}: lexical index files missing: {missing}")
            snapshot = replace(snapshot, text=_text_index(files, self.text_files, self.version))
        return snapshot

    def second_stage_files(self) -> list[str]:
        """Names of the files this snapshot still waits for (empty once :attr:`complete`)."""
        names = self.chunk_files() if self.stage == "first" else []
        return names + (list(self.text_files) if self.text_pending else [])

    def chunk_files(self) -> list[str]:
        """Names of the files the first stage answers without (empty for a float32 snapshot)."""
        if not isinstance(self.table, CompactVectors):
            return []
        from catalens.index.vectors import chunk_file

        return [chunk_file(i) for i in range(self.table.n_chunks)]

    def nbytes(self) -> int:
        """Total size of the serialised snapshot, in bytes."""
        files = self.to_files()
        return sum(files.size(name) for name in files)

    def resident_bytes(self) -> int:
        """Bytes of the arrays a search process holds for this snapshot (what its memory grows by)."""
        total = self.item_ids.nbytes + self.id_order.nbytes + self.records.nbytes()
        total += sum(a.nbytes for a in self.columns.arrays().values())
        total += sum(a.nbytes for a in self.table.arrays().values())
        if isinstance(self.table, CompactVectors) and self.table.chunks is not None:
            total += sum(c.nbytes for c in self.table.chunks)
        if self.graph is not None:
            total += sum(a.nbytes for a in self.graph.arrays().values())
        if self.text is not None:
            total += self.text.resident_bytes()
        return int(total)


class SnapshotFiles(Mapping[str, bytes]):
    """A snapshot's files by name, each serialised when it is read (and sized and hashed once, for the metadata)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._sources: dict[str, np.ndarray | bytes] = dict(arrays)
        self._described: dict[str, dict[str, Any]] = {}

    def add(self, name: str, data: bytes) -> None:
        self._sources[name] = data

    def __getitem__(self, name: str) -> bytes:
        source = self._sources[name]
        return source if isinstance(source, bytes) else _npy_bytes(source)

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def describe(self, name: str) -> dict[str, Any]:
        if name not in self._described:
            data = self[name]
            self._described[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return self._described[name]

    def size(self, name: str) -> int:
        source = self._sources[name]
        if isinstance(source, bytes):
            return len(source)
        return self.describe(name)["bytes"]


def _safe_name(name: str) -> str:
    """A file-name-safe, collision-free form of a column key such as ``cat:brand``."""
    readable = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return f"{readable}.{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


_NPY_HEADER_MAX = 65_546  # magic + version + length + the largest header .npy format 2 writes here


def _npy_view(data: bytes | memoryview, name: str) -> np.ndarray:
    """A read-only array over the bytes of a ``.npy`` file, without copying; object arrays refused."""
    stream = io.BytesIO(memoryview(data)[:_NPY_HEADER_MAX])  # the header only: BytesIO copies what it is given
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


def _record_table(meta: Mapping[str, Any], array: Callable[[str], np.ndarray]) -> RecordTable:
    """The record table a snapshot.json describes: packed rows with their dictionary, or plain JSON rows."""
    if not meta.get("records"):
        return RecordTable(array(RECORDS_FILE), array(RECORD_OFFSETS_FILE))
    codec = RecordCodec.from_parts(meta["records"], array(RECORD_DICTIONARY_FILE))
    return RecordTable(array(PACKED_RECORDS_FILE), array(RECORD_OFFSETS_FILE), codec)


def _text_index(files: Mapping[str, bytes | memoryview], names: Sequence[str], version: Any) -> LexicalIndex:
    """The stored lexical index over the given buffers (arrays shared, the vocabulary decoded once)."""
    try:
        arrays = {name[len(TEXT_PREFIX) : -len(".npy")]: _npy_view(files[name], name) for name in names}
        return LexicalIndex.from_arrays(arrays)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"snapshot {version}: lexical index does not load: {exc}") from exc


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
