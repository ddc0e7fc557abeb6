"""Beam search over pynndescent's exported search graph, in vectorised numpy.

The graph is pynndescent's *search graph* (the k-NN graph diversified, symmetrised and degree
pruned) exported as CSR arrays whose vertex numbers are the snapshot's rows. It is not connected:
on clustered data it falls into hundreds of weakly connected pieces, so a walk started in one
piece can never reach another. The builder therefore picks entry points that cover every piece
(one per component, the rest by k-means inside components); the search scores all entry points
with one matmul, seeds its pool with the best ones and expands from there.

Each step expands the ``expand`` best not-yet-expanded candidates of the pool at once: their
neighbours are gathered, the unvisited ones scored with a single matmul, and the pool is cut back
to the best ``ef``. The walk ends when every candidate in the pool has been expanded. Only numpy
is imported here: this module runs on the query path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from catalens.index.vectors import dot_rows

DEFAULT_EF = 96
DEFAULT_EXPAND = 24
DEFAULT_PROBE = 32
_STAMP_LIMIT = int(np.iinfo(np.int32).max)


@dataclass(frozen=True, eq=False)
class NeighbourGraph:
    """A directed neighbour graph over snapshot rows, as CSR arrays, with its entry points.

    With many entry points (16k at 1M rows), scoring them all would cost more than the walk, so
    they can be grouped: ``entry_points`` sorted by group, ``entry_group_ptr`` delimiting the
    groups and ``entry_centroids`` their unit-norm mean directions. A query then scores the
    centroids, and only the entry points of the ``probe`` best groups.
    """

    indptr: np.ndarray  # int32 (or int64)[n + 1]
    indices: np.ndarray  # int32[nnz], row numbers
    entry_points: np.ndarray  # int32[m], covering every weakly connected component
    entry_group_ptr: np.ndarray | None = None  # int64[c + 1]: group g = entry_points[ptr[g]:ptr[g + 1]]
    entry_centroids: np.ndarray | None = None  # float32[c, d]

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indices.ndim != 1 or self.entry_points.ndim != 1:
            raise ValueError("graph arrays must be one-dimensional")
        if self.indptr.size == 0 or int(self.indptr[-1]) != self.indices.size:
            raise ValueError("graph indptr does not match its indices")
        if self.entry_points.size == 0 and self.n_vertices > 0:
            raise ValueError("a non-empty graph needs at least one entry point")
        if (self.entry_group_ptr is None) != (self.entry_centroids is None):
            raise ValueError("entry groups need both their pointers and their centroids")
        if self.entry_group_ptr is not None and (
            self.entry_group_ptr.size != self.entry_centroids.shape[0] + 1
            or int(self.entry_group_ptr[-1]) != self.entry_points.size
        ):
            raise ValueError("entry group pointers do not match the entry points")

    @property
    def n_vertices(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def n_groups(self) -> int:
        return 0 if self.entry_centroids is None else int(self.entry_centroids.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"indptr": self.indptr, "indices": self.indices, "entry_points": self.entry_points}
        if self.entry_group_ptr is not None:
            out["entry_group_ptr"] = self.entry_group_ptr
            out["entry_centroids"] = self.entry_centroids
        return out


class _Scratch(threading.local):
    """Per-thread visit stamps, so nothing is cleared between queries.

    Each query owns a fresh range of stamps starting at ``base``: a vertex is visited in this query
    iff its stamp is >= ``base``. Writing distinct stamps (base + position) also removes duplicates
    among newly gathered neighbours: after ``stamps[new] = base + arange``, only the last copy of a
    vertex still reads back its own stamp. The stamps are int32 (4 MB at 1M rows, half of int64's
    cache footprint for the walk's random reads and writes); before a query could run past 2³¹ they
    are zeroed and start again.
    """

    def __init__(self) -> None:
        self.stamps: np.ndarray | None = None
        self.next_base = 1


class GraphSearcher:
    """Beam search over a :class:`NeighbourGraph` whose rows are the rows of ``vectors``.

    Parameters
    ----------
    vectors:
        float32[n, d], unit-norm rows; the score is the dot product. Or int8 codes with ``scale``: a row is
        ``code * scale`` (a compact snapshot's first stage), scored by gathering codes against ``query * scale``.
    graph:
        The neighbour graph over the same rows, with entry points.
    scale:
        Per-axis step of int8 ``vectors`` (None for float32 rows).
    """

    def __init__(self, vectors: np.ndarray, graph: NeighbourGraph, *, scale: np.ndarray | None = None) -> None:
        if graph.n_vertices != vectors.shape[0]:
            raise ValueError(f"graph has {graph.n_vertices} vertices but there are {vectors.shape[0]} vectors")
        self._vectors = vectors
        self._indptr = graph.indptr  # int32 or int64 as stored: a widened copy would cost 4 B per row
        self._indices = graph.indices.astype(np.int32, copy=False)
        self._entries = graph.entry_points.astype(np.int64, copy=False)
        self._scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        # A contiguous float32 copy makes scoring entry points (all, or a group's slice) a single BLAS call.
        entry_vectors = vectors[self._entries]
        if self._scale is not None:
            entry_vectors = entry_vectors.astype(np.float32) * self._scale
        self._entry_vectors = np.ascontiguousarray(entry_vectors, dtype=np.float32)
        self._group_ptr = None if graph.entry_group_ptr is None else graph.entry_group_ptr.astype(np.int64)
        self._centroids = graph.entry_centroids
        self._scratch = _Scratch()

    def _seed_entries(self, query: np.ndarray, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """Entry points to score for ``query`` and their scores: all of them, or those of the best groups."""
        if self._centroids is None or probe >= self._centroids.shape[0]:
            return self._entries, self._entry_vectors @ query
        centroid_scores = self._centroids @ query
        groups = np.argpartition(centroid_scores, centroid_scores.size - probe)[-probe:]
        ptr = self._group_ptr
        # a group's entry points are contiguous: score each slice in place rather than gather a float32 copy
        bounds = [(int(ptr[g]), int(ptr[g + 1])) for g in groups.tolist()]
        entry_vectors = self._entry_vectors
        scores = np.concatenate([entry_vectors[start:stop] @ query for start, stop in bounds])
        chosen = np.concatenate([self._entries[start:stop] for start, stop in bounds])
        return chosen, scores

    def _stamps(self) -> tuple[np.ndarray, _Scratch]:
        scratch = self._scratch
        if scratch.stamps is None or scratch.stamps.size != self._vectors.shape[0]:
            scratch.stamps = np.zeros(self._vectors.shape[0], dtype=np.int32)
            scratch.next_base = 1
        # A query uses at most one stamp per entry point and per gathered edge (each row is expanded once).
        elif scratch.next_base > _STAMP_LIMIT - self._entries.size - self._indices.size:
            scratch.stamps.fill(0)
            scratch.next_base = 1
        return scratch.stamps, scratch

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        ef: int = DEFAULT_EF,
        expand: int = DEFAULT_EXPAND,
        probe: int = DEFAULT_PROBE,
        allowed: np.ndarray | None = None,
        pool: int | None = None,
        max_steps: int = 100_000,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` rows by dot product with ``query``, best first.

        Parameters
        ----------
        query:
            float32[d], in index space.
        k:
            Number of results wanted.
        ef:
            Size of the result pool (raised to ``k`` if smaller); larger is slower and more exact.
        expand:
            How many of the best unexpanded candidates are expanded per step (one matmul each step).
        probe:
            When the entry points are grouped, how many groups' entry points are scored.
        allowed:
            Optional bool[n]: only rows marked True are returned, so a filter is applied before the
            top ``k`` is cut. The walk still passes through the other rows (they are needed to
            navigate) and goes on while an unexpanded candidate beats the ``ef``-th allowed result.
        pool:
            With ``allowed``: how many candidates (allowed or not) the walk keeps; default ``4·ef``.
            Without it the candidate pool is the result pool (``ef``).
        max_steps:
            Safety bound on the number of expansion steps.

        Returns
        -------
        (rows, scores): int64[<=k] row numbers and float32 scores, sorted by descending score.
        """
        if k <= 0 or self._entries.size == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        ef = max(ef, k)
        pool_size = ef if allowed is None else max(pool or 4 * ef, ef)
        vectors, indptr, indices = self._vectors, self._indptr, self._indices
        # int8 rows times the scaled query: dot_rows scores a step's ~500 rows with one BLAS call
        row_query = query if self._scale is None else (query * self._scale).astype(np.float32)
        stamps, scratch = self._stamps()
        base = scratch.next_base
        entries, entry_scores = self._seed_entries(query, probe)
        stamps[entries] = np.arange(base, base + entries.size, dtype=np.int32)
        counter = base + entries.size

        pool_rows, pool_scores = _top(entries, entry_scores, pool_size)
        pool_open = np.ones(pool_rows.size, dtype=bool)
        # Without a filter the result pool is the candidate pool; with one, a separate top-ef of allowed rows.
        worst_result = -np.inf
        if allowed is not None:
            ok = allowed[entries]
            result_rows, result_scores = _top(entries[ok], entry_scores[ok], ef)
            if result_rows.size >= ef:
                worst_result = result_scores.min()

        for _ in range(max_steps):
            open_idx = np.flatnonzero(pool_open)
            if open_idx.size == 0:
                break
            if open_idx.size > expand:
                open_idx = open_idx[np.argpartition(pool_scores[open_idx], open_idx.size - expand)[-expand:]]
            if allowed is not None and worst_result > -np.inf:
                open_idx = open_idx[pool_scores[open_idx] >= worst_result]
                if open_idx.size == 0:
                    break  # no candidate left that could lead to a better allowed row
            pool_open[open_idx] = False
            # the frontier's CSR rows in one gather: start of each row repeated over its length, plus a running index
            frontier = pool_rows[open_idx]
            starts = indptr[frontier]
            lengths = indptr[frontier + 1] - starts
            neighbours = indices[np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())]
            neighbours = neighbours[stamps[neighbours] < base]
            if neighbours.size == 0:
                continue
            fresh_stamps = np.arange(counter, counter + neighbours.size, dtype=np.int32)
            counter += neighbours.size
            stamps[neighbours] = fresh_stamps
            neighbours = neighbours[stamps[neighbours] == fresh_stamps]  # drop repeats
            scores = dot_rows(vectors, row_query, neighbours)

            pool_rows = np.concatenate((pool_rows, neighbours))
            pool_scores = np.concatenate((pool_scores, scores))
            pool_open = np.concatenate((pool_open, np.ones(neighbours.size, dtype=bool)))
            if pool_rows.size > pool_size:
                keep = np.argpartition(pool_scores, pool_rows.size - pool_size)[-pool_size:]
                pool_rows, pool_scores, pool_open = pool_rows[keep], pool_scores[keep], pool_open[keep]

            if allowed is not None:
                ok = allowed[neighbours]
                if ok.any():
                    result_rows = np.concatenate((result_rows, neighbours[ok]))
                    result_scores = np.concatenate((result_scores, scores[ok]))
                    result_rows, result_scores = _top(result_rows, result_scores, ef)
                    if result_rows.size >= ef:
                        worst_result = result_scores.min()
        scratch.next_base = counter + 1

        if allowed is None:
            result_rows, result_scores = pool_rows, pool_scores
        rows, scores = _top(result_rows, result_scores, k)
        order = np.lexsort((rows, -scores))
        return rows[order].astype(np.int64, copy=False), scores[order]


def _top(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring entries (unordered)."""
    if rows.size <= k:
        return rows, scores
    keep = np.argpartition(scores, rows.size - k)[-k:]
    return rows[keep], scores[keep]
