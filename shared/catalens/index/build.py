"""Build or compact a snapshot: the one module that imports pynndescent (lazily, only for a graph).

``build_snapshot`` folds item records (deltas and tombstones, in any order, duplicates allowed)
into the previous snapshot, resolving each item's state by S3 sequencer, and writes a new
immutable :class:`~catalens.index.snapshot.Snapshot`. Above ``graph_threshold`` items it also
builds pynndescent's search graph, exports it as CSR arrays over the snapshot's rows, and picks
entry points that cover every weakly connected component of it.

The builder runs in a container image (numba's 20 s start does not matter there); importing this
module is cheap, pynndescent is imported only when a graph is built.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalens.errors import ModelError
from catalens.index.filters import build_columns
from catalens.index.graph import NeighbourGraph
from catalens.index.records import ItemRecord, is_newer
from catalens.index.reduce import Projection, fit_projection, normalise
from catalens.index.snapshot import RecordTable, Snapshot

# Below this many items exact search beats the graph walk, or is close enough that a graph is not
# worth its build time; measured with `catalens bench index` (see the index notes in the report).
GRAPH_THRESHOLD = 20_000
DEFAULT_NEIGHBOURS = 30

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


@dataclass
class _State:
    """One item's winning state while merging: a snapshot row or a record."""

    sequencer: str
    deleted: bool
    record: ItemRecord | None = None  # from the records
    row: int = -1  # from the previous snapshot


def build_snapshot(
    records: Iterable[ItemRecord],
    *,
    model_fingerprint: str,
    previous: Snapshot | None = None,
    version: str | None = None,
    reduce_dim: int | None = None,
    whiten: bool = False,
    projection: Projection | None = None,
    graph_threshold: int = GRAPH_THRESHOLD,
    n_neighbors: int = DEFAULT_NEIGHBOURS,
    entry_points: int | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
    tombstone_ttl_seconds: float | None = None,
    now: float | None = None,
    graph_builder: GraphBuilder | None = None,
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
        The snapshot to compact into. Its projection is kept (profiles hold index-space vectors);
        to change the projection, rebuild from all item records with ``previous=None``.
    version:
        Name of the new version; default ``<generation>-<content hash>`` (deterministic).
    reduce_dim, whiten, projection:
        First build only: fit PCA (or PCA-whitening) to ``reduce_dim`` axes on the record vectors,
        or use the given ``projection``. Default: no reduction (index space = model space).
    graph_threshold:
        Build a neighbour graph when the snapshot has at least this many items.
    n_neighbors, entry_points, seed, n_jobs:
        pynndescent's ``n_neighbors``/``random_state``/``n_jobs``, and the entry-point budget
        (default :func:`default_entry_points`).
    tombstone_ttl_seconds:
        Forget tombstones older than this (by ``updated_at``); default keep them all, so a late,
        out-of-order create can never resurrect a deleted item.
    graph_builder:
        Replaces :func:`build_search_graph` (same signature); the benchmark passes one that also
        keeps the pynndescent index, to time pynndescent's own ``query`` beside ours.

    Deterministic: the same inputs, ``seed`` and ``n_jobs`` give the same snapshot (pynndescent's
    result depends on its thread count).
    """
    if previous is not None and previous.model_fingerprint != model_fingerprint:
        raise ModelError(
            f"snapshot {previous.version} was built with model {previous.model_fingerprint}, "
            f"not {model_fingerprint}; rebuild the index from the item vectors",
            code="model_mismatch",
        )
    if previous is not None and (reduce_dim is not None or projection is not None):
        current = previous.projection.output_dim if previous.projection is not None else None
        if reduce_dim != current or (projection is not None and projection is not previous.projection):
            raise ValueError("a compaction keeps the previous projection; rebuild with previous=None to change it")

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
    model_dim = model_dim or 0

    live_ids = sorted(item_id for item_id, state in states.items() if not state.deleted)
    now = time.time() if now is None else now
    tombstones = tuple(
        states[item_id].record
        for item_id in sorted(states)
        if states[item_id].deleted
        and (tombstone_ttl_seconds is None or now - states[item_id].record.updated_at <= tombstone_ttl_seconds)
    )

    if previous is not None:
        projection = previous.projection
    elif projection is None and reduce_dim is not None:
        fit_rows = [np.asarray(states[i].record.vector, dtype=np.float32) for i in live_ids]
        if not fit_rows:
            raise ValueError("cannot fit a projection without any live vectors")
        projection = fit_projection(np.stack(fit_rows), reduce_dim, whiten=whiten, seed=seed)
    index_dim = projection.output_dim if projection is not None else model_dim

    vectors = np.empty((len(live_ids), index_dim), dtype=np.float32)
    documents: list[dict[str, Any]] = []
    fresh_rows, fresh_vectors = [], []
    for position, item_id in enumerate(live_ids):
        state = states[item_id]
        if state.record is None:
            vectors[position] = previous.vectors[state.row]
            documents.append(previous.records.document(state.row))
        else:
            fresh_rows.append(position)
            fresh_vectors.append(np.asarray(state.record.vector, dtype=np.float32))
            documents.append(_document(state.record))
    if fresh_rows:
        stacked = np.stack(fresh_vectors)
        vectors[fresh_rows] = projection.apply(stacked) if projection is not None else normalise(stacked)

    graph = None
    order = np.arange(len(live_ids))
    graph_info: dict[str, Any] = {}
    if len(live_ids) >= max(graph_threshold, 2):
        started = time.perf_counter()
        builder = graph_builder or build_search_graph
        order, indptr, indices = builder(vectors, n_neighbors=n_neighbors, seed=seed, n_jobs=n_jobs)
        vectors = np.ascontiguousarray(vectors[order])
        budget = entry_points if entry_points is not None else default_entry_points(len(live_ids))
        graph_seconds = time.perf_counter() - started
        entries, n_components = choose_entry_points(vectors, indptr, indices, budget, seed=seed)
        entries, group_ptr, centroids = group_entry_points(vectors, entries, seed=seed)
        graph = NeighbourGraph(indptr, indices, entries, entry_group_ptr=group_ptr, entry_centroids=centroids)
        graph_info = {
            "n_neighbors": n_neighbors,
            "components": n_components,
            "entry_points": int(entries.size),
            "entry_groups": graph.n_groups,
            "pynndescent_seconds": round(graph_seconds, 3),
            "build_seconds": round(time.perf_counter() - started, 3),
        }
    live_ids = [live_ids[i] for i in order]
    documents = [documents[i] for i in order]
    item_ids = np.array([i.encode() for i in live_ids], dtype="S") if live_ids else np.empty(0, dtype="S1")
    if any(b"\0" in i for i in item_ids.tolist()):
        raise ValueError("item ids may not contain NUL characters")

    generation = previous.generation + 1 if previous is not None else 1
    if version is None:
        version = f"{generation:08d}-{_content_digest(model_fingerprint, projection, live_ids, documents, tombstones)}"
    return Snapshot(
        version=version,
        model_fingerprint=model_fingerprint,
        model_dim=model_dim,
        item_ids=item_ids,
        id_order=np.argsort(item_ids, kind="stable").astype(np.int64),
        vectors=vectors,
        records=RecordTable.encode(documents),
        columns=build_columns([doc["fields"] for doc in documents]),
        tombstones=tombstones,
        projection=projection,
        graph=graph,
        info={
            "generation": generation,
            "previous": previous.version if previous is not None else None,
            "created_at": now,
            "seed": seed,
            "graph": graph_info,
            "fields": sorted({name for doc in documents for name in doc["fields"]}),
        },
    )


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
    live_ids: list[str],
    documents: list[Mapping[str, Any]],
    tombstones: tuple[ItemRecord, ...],
) -> str:
    digest = hashlib.sha256(model_fingerprint.encode())
    digest.update((projection.fingerprint if projection is not None else "-").encode())
    for item_id, doc in sorted(zip(live_ids, documents, strict=True)):
        digest.update(f"+{item_id}\0{doc['sequencer']}\0{doc['source_etag']}\0".encode())
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


def nndescent(vectors: np.ndarray, *, n_neighbors: int = DEFAULT_NEIGHBOURS, seed: int = 0, n_jobs: int | None = None):
    """A prepared pynndescent index over unit-norm ``vectors`` (dot-product metric)."""
    import pynndescent  # the only import of pynndescent in the package; lazy on purpose

    index = pynndescent.NNDescent(
        np.ascontiguousarray(vectors, dtype=np.float32),
        metric="dot",
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


def weak_components(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Label of the weakly connected component of every vertex (0..c-1, by first vertex)."""
    from scipy.sparse import csr_array  # builder-only dependency (comes with pynndescent)
    from scipy.sparse.csgraph import connected_components

    n = indptr.size - 1
    adjacency = csr_array((np.ones(indices.size, dtype=np.int8), indices, indptr), shape=(n, n))
    _, labels = connected_components(adjacency, directed=True, connection="weak")
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
