"""Build or compact a snapshot: the one module that imports a graph library (lazily, only for a graph).

``build_snapshot`` folds item records (deltas and tombstones, in any order, duplicates allowed)
into the previous snapshot, resolving each item's state by S3 sequencer, and writes a new
immutable :class:`~catalens.index.snapshot.Snapshot`. Above ``BuildParams.graph_threshold`` items
it also builds a neighbour graph (the bottom layer of a faiss HNSW by default, or pynndescent's
search graph), exports it as CSR arrays over the snapshot's rows, and picks entry points that cover
every weakly connected component of it. It runs as named stages: resolve states, keep tombstones,
choose the projection, make the rows, add the graph, assemble.

The builder runs in a container image; importing this module is cheap, faiss or pynndescent is
imported only when a graph is built.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from catalens.errors import ModelError
from catalens.index.compact import CompactRows, compact_rows
from catalens.index.filters import build_columns, canonical_json
from catalens.index.graph import NeighbourGraph
from catalens.index.records import ItemRecord, is_newer
from catalens.index.reduce import Projection, fit_projection, normalise
from catalens.index.snapshot import RecordCodec, RecordTable, Snapshot, narrow_index
from catalens.index.vectors import CHUNK_ROWS, COARSE_DIM, DenseVectors, Layout
from catalens.text.lexical import LexicalIndex

# Below this many items exact search beats the graph walk, or is close enough that a graph is not
# worth its build time; measured with `catalens bench index` (see the index notes in the report).
GRAPH_THRESHOLD = 20_000
DEFAULT_NEIGHBOURS = 30
# HNSW links per vertex (its bottom layer keeps up to 2·M) and its construction pool. At 100k×3,984 (PCA-320
# first stage, calibrated synthetic set) its bottom layer (M 16: mean degree 20.9, +42 B per item) took recall@10 as
# served from 0.975 to 0.982 at the same ef where pynndescent's pruned search graph (degree 10.5) could not. At 1M
# the walk loses more than the first stage, and M 32 (mean degree 27.7, +30 B per item) buys more recall per ms
# of walk than a larger ef does: 0.931 at 3.6 ms (ef 320) against 0.920 at 4.0 ms for M 16 (ef 512), pool
# re-ranked exactly. See docs/operations.md, "The index at catalog scale".
DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_CONSTRUCTION = 200

GraphMethod = Literal["hnsw", "nndescent"]
# (vectors, *, n_neighbors, seed, n_jobs) -> (row order, CSR indptr, CSR indices); see build_search_graph.
GraphBuilder = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


def default_entry_points(n: int) -> int:
    """Entry-point budget: 16·sqrt(n) (≈1.6k at 10k, 5k at 100k, 16k at 1M), at least 16.

    Measured at 1M×256 (ef 96): 5.9k k-means entries gave recall@10 0.975, 10k 0.991, 16k 0.999;
    the misses were whole small clusters inside the giant component that no entry point was near.
    Grouping (see :func:`group_entry_points`) keeps scoring them cheap.
    """
    return max(16, min(65_536, int(16 * math.sqrt(max(n, 1)))))


def group_entry_points(
    vectors: np.ndarray, entries: np.ndarray, *, seed: int = 0, min_entries: int = 2048
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Group entry points by spherical k-means into ~4·sqrt(m) groups (None when there are few).

    Returns (entries sorted by group, group pointers int64[c + 1], unit-norm centroids float32[c, d]).
    At 1M rows, 16k entries in 512 groups with 32 probed kept recall@10 at 0.999 and cut the
    entry scoring from ~2 ms to ~0.2 ms.
    """
    if entries.size < min_entries:
        return entries, None, None
    n_groups = round(4 * math.sqrt(entries.size))
    entry_vectors = vectors[entries]
    centroids = _spherical_kmeans(entry_vectors, n_groups, np.random.default_rng(seed), 8)
    assignment = _assign(entry_vectors, centroids)
    order = np.argsort(assignment, kind="stable")
    group_ptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(assignment, minlength=n_groups), out=group_ptr[1:])
    return entries[order].astype(np.int32), group_ptr, np.ascontiguousarray(centroids, dtype=np.float32)


@dataclass(frozen=True)
class BuildParams:
    """How a snapshot is built; the same records, params and ``n_jobs`` give the same snapshot.

    Parameters
    ----------
    layout:
        ``compact`` (the default): int8 full vectors (residuals to the first stage) in slot chunks plus an
        int8 PCA first stage of ``coarse_dim`` axes (:mod:`catalens.index.vectors`), ~4.4 KB per item at 3,984
        dims and scores within ~1e-4 of float32 on real embeddings; ``float32``: unit float32 vectors (15.9 KB
        per item), the layout benchmarks compare with. A compaction may change the layout (the item vectors'
        space stays the model's, so profiles keep).
    coarse_dim, chunk_rows:
        Compact layout, first build only (later compactions keep the previous ones): first-stage axes and slots
        per full-vector chunk.
    reduce_dim, whiten, projection:
        float32 layout, first build only: fit PCA (or PCA-whitening) to ``reduce_dim`` axes on the record
        vectors, or use the given ``projection``. Default: no reduction (index space = model space). A
        compaction keeps the previous snapshot's projection (profiles hold index-space vectors);
        to change it, rebuild from all item records with ``previous=None``.
    graph_threshold:
        Build a neighbour graph when the snapshot has at least this many items; below it exact
        search is as fast.
    graph_method:
        "hnsw" (default): the bottom layer of a faiss HNSW index (``hnsw_m``, ``hnsw_ef_construction``);
        "nndescent": pynndescent's search graph (``n_neighbors``), the graph of snapshots before it.
    n_neighbors, seed, n_jobs:
        pynndescent's ``n_neighbors``/``random_state``; ``n_jobs`` threads for either library (``seed`` also
        seeds the projection fit and the entry-point k-means). Both graphs depend on the thread count.
    entry_points:
        The entry-point budget of the graph walk (default :func:`default_entry_points`).
    tombstone_ttl_seconds:
        Forget tombstones older than this (by ``updated_at``); default keep them all, so a late,
        out-of-order create can never resurrect a deleted item.
    text_index:
        Store the BM25 index over the rows' words (:mod:`catalens.text.lexical`) beside the vectors, so a search
        process loads it instead of tokenising every item on its first text query. Rebuilt whole by every
        compaction (its impacts depend on the whole collection's statistics): ~5 s per 100k items.
    graph_builder:
        Replaces the method's builder (``(vectors, *, n_neighbors, seed, n_jobs)`` like
        :func:`build_search_graph`); tests pass small fixed graphs.
    """

    layout: Layout = "compact"
    coarse_dim: int = COARSE_DIM
    chunk_rows: int = CHUNK_ROWS
    reduce_dim: int | None = None
    whiten: bool = False
    projection: Projection | None = None
    graph_threshold: int = GRAPH_THRESHOLD
    graph_method: GraphMethod = "hnsw"
    hnsw_m: int = DEFAULT_HNSW_M
    hnsw_ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION
    n_neighbors: int = DEFAULT_NEIGHBOURS
    entry_points: int | None = None
    seed: int = 0
    n_jobs: int | None = None
    tombstone_ttl_seconds: float | None = None
    graph_builder: GraphBuilder | None = None
    text_index: bool = True


DEFAULT_PARAMS = BuildParams()


@dataclass
class _State:
    """One item's winning state while merging: a snapshot row or a record."""

    sequencer: str
    deleted: bool
    record: ItemRecord | None = None  # from the records
    row: int = -1  # from the previous snapshot


@dataclass(frozen=True)
class _Rows:
    """The live items in row order: ids, index-space vectors, documents, and the graph over them (if any)."""

    item_ids: list[str]
    vectors: np.ndarray  # float32 unit rows the first stage scores (the graph's input)
    documents: RowDocuments
    graph: NeighbourGraph | None = None
    graph_info: Mapping[str, Any] = field(default_factory=dict)
    compact: CompactRows | None = None  # the compact layout's codes, slots and chunks, in the same row order


def build_snapshot(
    records: Iterable[ItemRecord],
    *,
    model_fingerprint: str,
    previous: Snapshot | None = None,
    version: str | None = None,
    params: BuildParams = DEFAULT_PARAMS,
    now: float | None = None,
) -> Snapshot:
    """Build a new snapshot from ``previous`` (None for a first build or a full rebuild) plus ``records``.

    Parameters
    ----------
    records:
        Item states from ingest, deltas and tombstones; several per item and any order are fine:
        the latest sequencer wins (a tombstone wins a tie), across records and ``previous``.
    model_fingerprint:
        Fingerprint of the model that produced the record vectors; ``previous`` must match it.
    previous:
        The snapshot to compact into (its projection is kept).
    version:
        Name of the new version; default ``<generation>-<content hash>`` (deterministic).
    params:
        How to build: reduction, graph, seeds, tombstone expiry (:class:`BuildParams`).
    now:
        The build's time (tombstone expiry, ``created_at``); default the wall clock.

    Deterministic: the same inputs, ``params`` and ``now`` give the same snapshot.
    """
    if previous is None and params.layout == "compact" and (params.reduce_dim or params.projection):
        raise ValueError("the compact layout keeps vectors in model space: reduce_dim and projection are float32 only")
    _check_compatible(previous, model_fingerprint, params)
    states, model_dim = _resolve_states(records, previous)
    now = time.time() if now is None else now
    live_ids = sorted(item_id for item_id, state in states.items() if not state.deleted)
    tombstones = _kept_tombstones(states, now, params.tombstone_ttl_seconds)
    compact_previous = previous is not None and previous.table.layout == "compact"
    # A reduced index space (a float32 snapshot with a projection) stays float32 until a rebuild; an empty first
    # build has nothing to learn a codec from.
    reduced = previous is not None and previous.projection is not None
    if params.layout == "compact" and not reduced and (live_ids or compact_previous):
        projection = None
        compact = compact_rows(
            live_ids, states, previous, coarse_dim=params.coarse_dim, chunk_rows=params.chunk_rows, seed=params.seed
        )
        documents = RowDocuments.of(live_ids, states, previous)
        rows = _Rows(list(live_ids), compact.first_stage(), documents, compact=compact)
    else:
        projection = _index_projection(previous, params, [states[i] for i in live_ids])
        rows = _index_rows(live_ids, states, previous, projection, model_dim)
    rows = _with_search_graph(rows, params)
    return _assemble(rows, tombstones, model_fingerprint, model_dim, projection, previous, version, params, now)


def _check_compatible(previous: Snapshot | None, model_fingerprint: str, params: BuildParams) -> None:
    """A compaction folds records into ``previous``: both must come from one model and share one index space."""
    if previous is None:
        return
    if previous.model_fingerprint != model_fingerprint:
        raise ModelError(
            f"snapshot {previous.version} was built with model {previous.model_fingerprint}, "
            f"not {model_fingerprint}; rebuild the index from the item vectors",
            code="model_mismatch",
        )
    if params.layout == "compact" and (params.reduce_dim is not None or params.projection is not None):
        raise ValueError("the compact layout keeps vectors in model space: reduce_dim and projection are float32 only")
    if params.layout == "float32" and previous.table.layout == "compact" and previous.table.stage != "full":
        raise ValueError("converting a compact snapshot needs its full-vector chunks loaded")
    if previous.table.layout == "compact" or params.layout == "compact":
        return
    if params.reduce_dim is not None or params.projection is not None:
        current = previous.projection.output_dim if previous.projection is not None else None
        if params.reduce_dim != current or (
            params.projection is not None and params.projection is not previous.projection
        ):
            raise ValueError("a compaction keeps the previous projection; rebuild with previous=None to change it")


def _resolve_states(records: Iterable[ItemRecord], previous: Snapshot | None) -> tuple[dict[str, _State], int]:
    """Each item's winning state by S3 sequencer, across ``previous`` and ``records``, and the model's dimension.

    Order comes from the sequencer, never from arrival: a late, older event loses (docs/design.md, invariant 1).
    """
    states: dict[str, _State] = {}
    if previous is not None:
        for row in range(len(previous)):
            states[previous.item_id(row)] = _State(previous.sequencer_of(row), False, row=row)
        for tombstone in previous.tombstones:
            states[tombstone.item_id] = _State(tombstone.sequencer, True, record=tombstone)

    model_dim = previous.model_dim if previous is not None and previous.model_dim else None
    for record in records:
        if not record.deleted:
            if record.vector is None:
                raise ValueError(f"record for item {record.item_id!r} is not deleted but has no vector")
            dim = int(np.asarray(record.vector).shape[-1])
            model_dim = dim if model_dim is None else model_dim
            if dim != model_dim:
                raise ModelError(
                    f"record {record.item_id!r} has a {dim}-dim vector but the index holds {model_dim}-dim vectors",
                    code="model_mismatch",
                )
        current = states.get(record.item_id)
        if current is None or is_newer(record, _as_record(current)):
            states[record.item_id] = _State(record.sequencer, record.deleted, record=record)
    return states, model_dim or 0


def _kept_tombstones(states: Mapping[str, _State], now: float, ttl_seconds: float | None) -> tuple[ItemRecord, ...]:
    """The deleted items the snapshot remembers (by id), so a late, older create cannot resurrect one."""
    return tuple(
        states[item_id].record
        for item_id in sorted(states)
        if states[item_id].deleted and (ttl_seconds is None or now - states[item_id].record.updated_at <= ttl_seconds)
    )


class RowDocuments(Sequence[dict[str, Any]]):
    """Each row's document (fields, image key, etag, sequencer, time), decoded only when read.

    A row kept from the previous snapshot is its row number there (its stored bytes are copied into the new record
    table when both pack rows with one codec); a fresh one is its document. At a million items, a list of decoded
    dicts would cost about 1 KB per item of builder memory; this costs a few bytes.
    """

    def __init__(self, sources: list[int | dict[str, Any]], previous: Snapshot | None) -> None:
        self._sources = sources
        self._previous = previous

    @classmethod
    def of(cls, live_ids: Sequence[str], states: Mapping[str, _State], previous: Snapshot | None) -> RowDocuments:
        sources: list[int | dict[str, Any]] = []
        for item_id in live_ids:
            state = states[item_id]
            sources.append(state.row if state.record is None else _document(state.record))
        return cls(sources, previous)

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        source = self._sources[row]
        return self._previous.records.document(source) if isinstance(source, int) else source

    def raw(self, row: int) -> bytes:
        """The row's canonical JSON."""
        source = self._sources[row]
        if isinstance(source, int):
            return self._previous.records.json(source)
        return canonical_json(source).encode()

    def reordered(self, order: np.ndarray) -> RowDocuments:
        return RowDocuments([self._sources[i] for i in order.tolist()], self._previous)

    def record_table(self, codec: RecordCodec | None) -> RecordTable:
        """The rows' record table, each row packed by ``codec`` (None: plain JSON). A row kept from a previous
        snapshot packed by the same codec keeps its bytes, so a compaction packs only the rows it changes."""
        kept = self._previous is not None and codec is not None and self._previous.records.codec is codec
        rows: list[bytes] = []
        for row, source in enumerate(self._sources):
            if kept and isinstance(source, int):
                rows.append(self._previous.records.packed(source))
            else:
                rows.append(self.raw(row) if codec is None else codec.encode(self.raw(row)))
        return RecordTable.from_rows(rows, codec)


class _RawRows(Sequence[bytes]):
    """Each row's canonical JSON, read on demand (a codec learns its dictionary from a few of them)."""

    def __init__(self, documents: RowDocuments) -> None:
        self._documents = documents

    def __len__(self) -> int:
        return len(self._documents)

    def __getitem__(self, row):  # type: ignore[override]
        return self._documents.raw(row)


def _record_codec(documents: RowDocuments, previous: Snapshot | None) -> RecordCodec | None:
    """The previous snapshot's codec while it fits the catalog (its rows keep their bytes), else one learned from
    these rows; None when there are no rows to learn from."""
    kept = previous.records.codec if previous is not None else None
    if kept is not None and not kept.outgrown(len(documents)):
        return kept
    return RecordCodec.learn(_RawRows(documents)) if len(documents) else None


class _Fields(Sequence[Mapping[str, Any]]):
    """The ``fields`` of each row, decoded on each read (build_columns passes over them a few times)."""

    def __init__(self, documents: RowDocuments) -> None:
        self._documents = documents

    def __len__(self) -> int:
        return len(self._documents)

    def __getitem__(self, row):  # type: ignore[override]
        return self._documents[row]["fields"]

    def __iter__(self):
        for row in range(len(self._documents)):
            yield self._documents[row]["fields"]


def _index_projection(previous: Snapshot | None, params: BuildParams, live: list[_State]) -> Projection | None:
    """The model → index space map: the previous one (profiles hold index-space vectors), given, fitted, or none."""
    if previous is not None:
        return previous.projection
    if params.projection is not None or params.reduce_dim is None:
        return params.projection
    fit_rows = [np.asarray(state.record.vector, dtype=np.float32) for state in live]
    if not fit_rows:
        raise ValueError("cannot fit a projection without any live vectors")
    return fit_projection(np.stack(fit_rows), params.reduce_dim, whiten=params.whiten, seed=params.seed)


def _index_rows(
    live_ids: list[str],
    states: Mapping[str, _State],
    previous: Snapshot | None,
    projection: Projection | None,
    model_dim: int,
) -> _Rows:
    """Vectors and documents of the live items, sorted by id: rows kept from ``previous`` are copied as they are
    (already in index space), new records are projected (or normalised) together in one matmul."""
    index_dim = projection.output_dim if projection is not None else model_dim
    vectors = np.empty((len(live_ids), index_dim), dtype=np.float32)
    sources: list[int | dict[str, Any]] = []
    fresh_rows, fresh_vectors = [], []
    for position, item_id in enumerate(live_ids):
        state = states[item_id]
        if state.record is None:
            vectors[position] = previous.table.rows(np.array([state.row]))[0]
            sources.append(state.row)
        else:
            fresh_rows.append(position)
            fresh_vectors.append(np.asarray(state.record.vector, dtype=np.float32))
            sources.append(_document(state.record))
    if fresh_rows:
        stacked = np.stack(fresh_vectors)
        vectors[fresh_rows] = projection.apply(stacked) if projection is not None else normalise(stacked)
    return _Rows(list(live_ids), vectors, RowDocuments(sources, previous))


def _with_search_graph(rows: _Rows, params: BuildParams) -> _Rows:
    """Above the threshold, the neighbour graph with entry points covering every piece of it, and the rows in the
    graph builder's order (neighbours close in memory); below it, the rows as they are, for exact search."""
    n = len(rows.item_ids)
    if n < max(params.graph_threshold, 2):
        return rows
    started = time.perf_counter()
    if params.graph_builder is not None:
        order, indptr, indices = params.graph_builder(
            rows.vectors, n_neighbors=params.n_neighbors, seed=params.seed, n_jobs=params.n_jobs
        )
    elif params.graph_method == "hnsw":
        order, indptr, indices = build_hnsw_graph(
            rows.vectors, m=params.hnsw_m, ef_construction=params.hnsw_ef_construction, n_jobs=params.n_jobs
        )
    elif params.graph_method == "nndescent":
        order, indptr, indices = build_search_graph(
            rows.vectors, n_neighbors=params.n_neighbors, seed=params.seed, n_jobs=params.n_jobs
        )
    else:
        raise ValueError(f"unknown graph method {params.graph_method!r}")
    vectors = np.ascontiguousarray(rows.vectors[order])
    budget = params.entry_points if params.entry_points is not None else default_entry_points(n)
    graph_seconds = time.perf_counter() - started
    entries, n_components = choose_entry_points(vectors, indptr, indices, budget, seed=params.seed)
    entries, group_ptr, centroids = group_entry_points(vectors, entries, seed=params.seed)
    graph = NeighbourGraph(narrow_index(indptr), indices, entries, entry_group_ptr=group_ptr, entry_centroids=centroids)
    graph_info = {
        "method": params.graph_method if params.graph_builder is None else "custom",
        **({"hnsw_m": params.hnsw_m} if params.graph_method == "hnsw" else {"n_neighbors": params.n_neighbors}),
        "mean_degree": round(indices.size / max(n, 1), 2),
        "components": n_components,
        "entry_points": int(entries.size),
        "entry_groups": graph.n_groups,
        "graph_seconds": round(graph_seconds, 3),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    return _Rows(
        item_ids=[rows.item_ids[i] for i in order],
        vectors=vectors,
        documents=rows.documents.reordered(order),
        graph=graph,
        graph_info=graph_info,
        compact=rows.compact.reordered(order) if rows.compact is not None else None,
    )


def _assemble(
    rows: _Rows,
    tombstones: tuple[ItemRecord, ...],
    model_fingerprint: str,
    model_dim: int,
    projection: Projection | None,
    previous: Snapshot | None,
    version: str | None,
    params: BuildParams,
    now: float,
) -> Snapshot:
    """The snapshot itself: ids as bytes with their sorted order (for lookups), field columns (for filters), and
    the info a later compaction and an operator read (generation, lineage, seed, graph, field names)."""
    item_ids = np.array([i.encode() for i in rows.item_ids], dtype="S") if rows.item_ids else np.empty(0, dtype="S1")
    if any(b"\0" in i for i in item_ids.tolist()):
        raise ValueError("item ids may not contain NUL characters")
    generation = previous.generation + 1 if previous is not None else 1
    if version is None:
        digest = _content_digest(model_fingerprint, projection, item_ids, rows.documents, tombstones)
        version = f"{generation:08d}-{digest}"
    # the compact layout packs its records; a float32 snapshot keeps plain rows, which every release reads
    codec = _record_codec(rows.documents, previous) if rows.compact is not None else None
    records = rows.documents.record_table(codec)
    return Snapshot(
        version=version,
        model_fingerprint=model_fingerprint,
        model_dim=model_dim,
        item_ids=item_ids,
        id_order=narrow_index(np.argsort(item_ids, kind="stable")),
        table=rows.compact.table() if rows.compact is not None else DenseVectors(rows.vectors),
        records=records,
        columns=build_columns(_Fields(rows.documents)),
        tombstones=tombstones,
        projection=projection,
        graph=rows.graph,
        info={
            "generation": generation,
            "previous": previous.version if previous is not None else None,
            "created_at": now,
            "seed": params.seed,
            "graph": dict(rows.graph_info),
            **({"chunks_reused": rows.compact.chunks_reused} if rows.compact is not None else {}),
            "fields": sorted({name for fields in _Fields(rows.documents) for name in fields}),
        },
        text=_text_index(records) if params.text_index else None,
    )


def _text_index(records: RecordTable) -> LexicalIndex:
    """The lexical index of the rows, read back from the record table: the documents a reader's fallback build
    (:func:`catalens.text.catalog.snapshot_text_index`) reads, so both give the same index."""
    return LexicalIndex.build(records.document(row)["fields"] for row in range(len(records)))


def _as_record(state: _State) -> ItemRecord:
    if state.record is not None:
        return state.record
    return ItemRecord("", None, {}, "", "", state.sequencer, deleted=state.deleted)


def _document(record: ItemRecord) -> dict[str, Any]:
    return {
        "fields": dict(record.fields),
        "image_key": record.image_key,
        "source_etag": record.source_etag,
        "sequencer": record.sequencer,
        "updated_at": float(record.updated_at),
    }


def _content_digest(
    model_fingerprint: str,
    projection: Projection | None,
    item_ids: np.ndarray,
    documents: RowDocuments,
    tombstones: tuple[ItemRecord, ...],
) -> str:
    """A short hash of what the version holds, over the items in id order (UTF-8 bytes sort as the strings do)."""
    digest = hashlib.sha256(model_fingerprint.encode())
    digest.update((projection.fingerprint if projection is not None else "-").encode())
    for row in np.argsort(item_ids, kind="stable").tolist():
        doc = documents[row]
        digest.update(f"+{item_ids[row].decode()}\0{doc['sequencer']}\0{doc['source_etag']}\0".encode())
    for tombstone in tombstones:
        digest.update(f"-{tombstone.item_id}\0{tombstone.sequencer}\0".encode())
    return digest.hexdigest()[:12]


def build_search_graph(
    vectors: np.ndarray, *, n_neighbors: int = DEFAULT_NEIGHBOURS, seed: int = 0, n_jobs: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run pynndescent on unit-norm ``vectors`` and export its search graph.

    Returns ``(order, indptr, indices)``: pynndescent renumbers vertices in its search-tree order
    (neighbours end up close in memory), so the caller must store row ``i`` = ``vectors[order[i]]``;
    ``indptr``/``indices`` are the CSR search graph over those rows (int64 / int32).
    """
    index = nndescent(vectors, n_neighbors=n_neighbors, seed=seed, n_jobs=n_jobs)
    return export_search_graph(index)


def build_hnsw_graph(
    vectors: np.ndarray,
    *,
    m: int = DEFAULT_HNSW_M,
    ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION,
    n_jobs: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bottom layer of a faiss HNSW index over unit-norm ``vectors``, as ``(order, indptr, indices)``.

    Only the bottom layer is kept (every vertex with up to ``2·m`` neighbours chosen by HNSW's
    diversity rule, long links included); the walk enters it from k-means entry points instead of the
    upper layers. Rows are renumbered in reverse Cuthill-McKee order, so graph neighbours sit close in
    memory as pynndescent's tree order kept them. Builder memory: faiss holds a float32 copy of the
    rows plus ~0.13 KB of links per row, freed before the graph is returned.
    """
    import faiss  # builder-only dependency, imported when a graph is built

    n, dim = vectors.shape
    faiss.omp_set_num_threads(n_jobs or os.cpu_count() or 1)
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    hnsw = index.hnsw
    width = hnsw.nb_neighbors(0)  # bottom-layer slots: they come first in each vertex's block of links
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)[:n]
    links = faiss.vector_to_array(hnsw.neighbors)
    del index, hnsw
    indices_parts, degrees = [], np.empty(n, dtype=np.int64)
    for start in range(0, n, 65_536):  # blockwise: a dense [n, 2m] gather would double the links' memory
        block = links[offsets[start : start + 65_536, None] + np.arange(width)[None, :]]
        present = block >= 0
        degrees[start : start + block.shape[0]] = present.sum(axis=1)
        indices_parts.append(block[present].astype(np.int32))
    del links
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(degrees, out=indptr[1:])
    indices = np.concatenate(indices_parts) if indices_parts else np.empty(0, np.int32)
    return _locality_order(indptr, indices)


def _locality_order(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber a CSR graph in reverse Cuthill-McKee order: a walk's gathers then touch nearby rows."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee  # builder-only dependency

    n = indptr.size - 1
    order = np.asarray(reverse_cuthill_mckee(_adjacency(indptr, indices), symmetric_mode=False), dtype=np.int64)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    degrees = np.diff(indptr)[order]
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(degrees, out=new_indptr[1:])
    # the old positions of each renumbered vertex's links, in one vectorised gather
    sources = np.repeat(indptr[:-1][order] - new_indptr[:-1], degrees) + np.arange(indices.size, dtype=np.int64)
    return order, new_indptr, position[indices[sources]].astype(np.int32)


def nndescent(vectors: np.ndarray, *, n_neighbors: int = DEFAULT_NEIGHBOURS, seed: int = 0, n_jobs: int | None = None):
    """A prepared pynndescent index over unit-norm ``vectors`` (Euclidean: the order of the dot product)."""
    import pynndescent  # the only import of pynndescent in the package; lazy on purpose

    # Euclidean distance orders unit vectors exactly as the dot product does, and pynndescent copies the data to
    # normalise it for "dot": at a million 256-d rows that copy is 1 KB per item of builder memory.
    index = pynndescent.NNDescent(
        np.ascontiguousarray(vectors, dtype=np.float32),
        metric="euclidean",
        n_neighbors=min(n_neighbors, vectors.shape[0] - 1),
        random_state=seed,
        n_jobs=n_jobs,
        compressed=True,
    )
    index.prepare()
    return index


def export_search_graph(index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, indptr, indices) of a prepared pynndescent index: its search graph as CSR arrays.

    pynndescent 0.7 keeps the graph in ``_search_graph`` (a scipy CSR array over vertices in
    search-tree order) and the permutation in ``_vertex_order`` (vertex i = input row order[i]).
    """
    search_graph = index._search_graph
    order = np.asarray(index._vertex_order, dtype=np.int64)
    indptr = np.asarray(search_graph.indptr, dtype=np.int64)
    indices = np.asarray(search_graph.indices, dtype=np.int32)
    return order, indptr, indices


def _adjacency(indptr: np.ndarray, indices: np.ndarray) -> Any:
    """A CSR graph as the scipy sparse matrix its graph algorithms take (unit weights)."""
    from scipy.sparse import csr_array  # builder-only dependency

    n = indptr.size - 1
    return csr_array((np.ones(indices.size, dtype=np.int8), indices, indptr), shape=(n, n))


def weak_components(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Label of the weakly connected component of every vertex (0..c-1, by first vertex)."""
    from scipy.sparse.csgraph import connected_components  # builder-only dependency

    _, labels = connected_components(_adjacency(indptr, indices), directed=True, connection="weak")
    # Renumber by first appearance so labels do not depend on scipy's traversal.
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(np.argsort(first))] = np.arange(first.size)
    return rank[labels]


def choose_entry_points(
    vectors: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    budget: int,
    *,
    seed: int = 0,
    kmeans_iterations: int = 6,
    sample_per_centre: int = 12,
) -> tuple[np.ndarray, int]:
    """Entry points covering every weakly connected component of the graph.

    Each component gets ``max(1, round(budget * size / n))`` entry points: one (the member nearest
    its mean direction) for a small component, otherwise the members nearest the centres of a
    spherical k-means run on a sample of the component. Returns (sorted int32 rows, number of
    components); vertices without incoming edges are added too. A walk only reaches vertices of
    the components it starts in; without this, recall on clustered data stalls at 0.85–0.90.
    Memory stays bounded (similarities are computed in blocks): a 1M-row graph with 16k entry
    points fits a small builder.
    """
    labels = weak_components(indptr, indices)
    n = labels.size
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    chosen: list[np.ndarray] = []
    for members in np.split(order, bounds):
        wanted = max(1, round(budget * members.size / n))
        if members.size <= wanted:
            chosen.append(members)
            continue
        if wanted == 1:
            member_vectors = vectors[members]
            chosen.append(members[[int(np.argmax(member_vectors @ member_vectors.sum(axis=0)))]])
            continue
        sample = members
        if members.size > sample_per_centre * wanted:
            sample = np.sort(rng.choice(members, sample_per_centre * wanted, replace=False))
        sample_vectors = vectors[sample]
        centres = _spherical_kmeans(sample_vectors, wanted, rng, kmeans_iterations)
        nearest = _argmax_rows(sample_vectors, centres)  # for each centre, the nearest sampled member
        chosen.append(sample[np.unique(nearest)])
    # Vertices no edge points to (pruning leaves a few: ~0.1% at 1M) can only be found as entry points.
    chosen.append(np.flatnonzero(np.bincount(indices, minlength=n) == 0))
    entries = np.unique(np.concatenate(chosen)) if n else np.empty(0, dtype=np.int64)
    return entries.astype(np.int32), int(labels.max() + 1) if n else 0


_BLOCK_ELEMENTS = 1 << 24  # similarities computed per block: 64 MiB of float32


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the most similar centre for every row of ``x`` (blockwise)."""
    block = max(1, _BLOCK_ELEMENTS // max(1, centres.shape[0]))
    return np.concatenate([np.argmax(x[i : i + block] @ centres.T, axis=1) for i in range(0, x.shape[0], block)])


def _argmax_rows(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For every centre, the index of the most similar row of ``x`` (blockwise)."""
    block = max(1, _BLOCK_ELEMENTS // max(1, centres.shape[0]))
    best_score = np.full(centres.shape[0], -np.inf, dtype=np.float32)
    best_row = np.zeros(centres.shape[0], dtype=np.int64)
    for i in range(0, x.shape[0], block):
        scores = x[i : i + block] @ centres.T
        rows = np.argmax(scores, axis=0)
        top = scores[rows, np.arange(centres.shape[0])]
        better = top > best_score
        best_score[better] = top[better]
        best_row[better] = rows[better] + i
    return best_row


def _spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """k unit-norm centres of ``x`` by Lloyd iterations on cosine similarity."""
    centres = x[np.sort(rng.choice(x.shape[0], k, replace=False))].copy()
    for _ in range(iterations):
        assignment = _assign(x, centres)
        order = np.argsort(assignment, kind="stable")
        present, starts = np.unique(assignment[order], return_index=True)
        sums = np.add.reduceat(x[order], starts, axis=0)
        centres[present] = normalise(sums)
    return centres
