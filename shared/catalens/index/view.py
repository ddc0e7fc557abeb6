"""The query side: a snapshot plus the deltas not yet compacted into it, searched as one index.

:class:`IndexView` resolves each item's state across the snapshot and the deltas by S3 sequencer
(latest wins; a tombstone hides the item), searches the snapshot exactly or over its neighbour
graph, searches the delta vectors exactly, and merges both exactly: scores are comparable (both
cosine in index space), no item appears twice, hits come best first. Filters are applied before
the top ``k`` is cut, on both parts. Only numpy is imported (this runs in the search Lambda).

A view also carries what query-domain calibration (:mod:`catalens.query_domain`) needs, both in index space: the
query domain the cache loaded (``query_domain``) and the mean of the live item vectors (``catalog_mean``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from catalens.errors import ModelError
from catalens.index.filters import Filter
from catalens.index.records import Hit, IndexedItem, ItemRecord, is_newer, sequencer_key
from catalens.index.reduce import normalise
from catalens.index.snapshot import Snapshot
from catalens.index.vectors import FixedVectors, VectorTable, dot_rows
from catalens.query_domain import QueryDomain
from catalens.text.catalog import fresh_scores, snapshot_text_index
from catalens.text.lexical import LexicalIndex, query_terms

Strategy = Literal["auto", "exact", "graph"]

# A compact snapshot re-scores max(2k, k + RERANK_EXTRA) first-stage candidates with its full vectors, and a graph
# walk's whole pool when that is larger (`catalens bench index`: recall@10 against float32 exact, see
# docs/operations.md). 190: at 1M an exact scan of the first stage holds 0.953 of the float32 top 10 in its best
# 106 rows and 0.974 in 200 (0.990 in 400), and the M-32 walk at ef 256 gives 0.919 with 200 against 0.906 with
# 106; 94 more rows cost ~0.2 ms. All 256 of its pool: 0.9205, at no measurable cost (p50 0.99x, alternated).
RERANK_EXTRA = 190

log = logging.getLogger(__name__)

# Per snapshot, the float64 sum of its vectors: views are rebuilt whenever the deltas change, and each one's
# catalog mean is this sum corrected for the few rows its deltas hide or add (not a pass over every row).
_snapshot_sums: weakref.WeakKeyDictionary[Snapshot, np.ndarray] = weakref.WeakKeyDictionary()
_snapshot_sums_lock = threading.Lock()


# Per vector table, the query domain it last prepared for calibration and what it prepared: a domain's 257 rows
# pass once through the table's 5 MB projection (~9 ms at 3,984 dims, one thread), not once per view or per query.
_domain_vectors: weakref.WeakKeyDictionary[VectorTable, tuple[QueryDomain, FixedVectors]] = weakref.WeakKeyDictionary()
_domain_vectors_lock = threading.Lock()


def _prepared_domain(table: VectorTable, domain: QueryDomain) -> FixedVectors:
    with _domain_vectors_lock:
        cached = _domain_vectors.get(table)
    if cached is not None and cached[0] is domain:
        return cached[1]
    prepared = table.prepare_fixed(domain.term_rows)
    with _domain_vectors_lock:
        _domain_vectors[table] = (domain, prepared)
    return prepared


def _snapshot_sum(snapshot: Snapshot) -> np.ndarray:
    with _snapshot_sums_lock:
        total = _snapshot_sums.get(snapshot)
    if total is None:
        total = snapshot.table.total()
        with _snapshot_sums_lock:
            _snapshot_sums[snapshot] = total
    return total


@dataclass(frozen=True)
class SearchParams:
    """Knobs of the snapshot search; defaults set by ``catalens bench index`` on this machine.

    Parameters
    ----------
    ef:
        Candidate pool of the graph walk (recall vs latency); a compact table re-scores the whole pool. 352: what
        the 5 ms bound leaves at 1M once a search no longer rebuilds its hits' vectors (1.07 ms of a 1M search).
        Whole searches on the 1M bench snapshot (compact, M-32 graph, synthetic set, one thread), alternated per
        query, 600 timed each: ef 256 with the hits' vectors (the search before) recall@10 0.924 at p50 4.65 ms;
        without them ef 256 0.924 at 3.60, 352 0.9375 at 4.42, 384 0.945 at 4.81 ms. Timed as `catalens bench
        index` times them (a fresh process each, three each, alternated): 352 4.46-4.73 ms, 384 4.99-5.59 ms. At
        100k, 1,500 timed each: 0.9952 at 3.51 ms before, 0.9956 at 3.15 ms with ef 352. The walk, not the first
        stage, loses most of the recall: at ef 256 it finds 98% of the first stage's own top 10 but 93% of its top
        200 at 1M.
    expand:
        Candidates expanded per step of the walk (one matmul per step). More per step means fewer steps for the
        same pool (~80 µs of numpy calls each besides scoring). Alternated at ef 256: 24 -> 32 gave p50 0.95x at
        1M (recall 0.9205 -> 0.922) and 0.94x at 100k (0.9907 both); 32 -> 40 gives 0.95x and 0.97x in two runs
        at 1M (recall 0.924 both; 48 gains nothing more) and 0.99x at 100k (0.9952 both).
    probe:
        Groups of entry points scored per query (when the snapshot groups them).
    filtered_exact_below, filtered_exact_share:
        When a filter leaves at most max(``filtered_exact_below``, ``filtered_exact_share`` × the snapshot's rows)
        rows, search exactly over just those rows instead of walking the graph. A filtered walk widens its pool
        (up to ``max_ef``) and still misses some, so exact wins wherever it is no slower. Measured on the bench
        snapshots (compact, synthetic set, one thread, 100 queries, p50 exact against graph): at 1M rows, 5k allowed
        2.1 against 15.5 ms (graph recall 0.95), 20k 4.2 against 17.2, 50k 9.3 against 17.3 (0.975), 100k 16.2
        against 16.7 (0.982), 200k 28.6 against 15.0; at 100k rows, 20k allowed 4.1 against 10.5, 30k 8.3 against
        7.8, 50k 8.1 against 5.7 (0.999). The walk's random reads slow once the first stage outgrows the caches, so
        the crossover grows with the catalog: a tenth of the rows at 1M, a quarter at 100k.
    max_ef:
        Upper bound of the candidate pool when a filter widens it (4·ef / selectivity).
    """

    ef: int = 352
    expand: int = 40
    probe: int = 32
    filtered_exact_below: int = 20_000
    filtered_exact_share: float = 0.1
    max_ef: int = 2048

    @classmethod
    def for_candidates(cls, candidates: int) -> SearchParams:
        """A deployment's pool (``SEARCH_CANDIDATES``), each step expanding a sixteenth of it (at least ``expand``).

        Fewer, larger steps pay at large pools (~80 µs of numpy calls per step): on the 1M bench snapshot, alternated
        per query (400 timed each, recall unchanged), 1,024 with 64 per step 0.96x the p50 of 40 per step, 2,048 with
        128 0.88x (17.2 ms), 3,072 with 192 0.82x (23.8 ms, recall@10 0.9915).
        """
        return cls(ef=candidates, expand=max(cls.expand, candidates // 16))

    def filtered_exact_limit(self, n_rows: int) -> int:
        """The most rows a filter may leave in a snapshot of ``n_rows`` for a search to scan them exactly."""
        return max(self.filtered_exact_below, int(self.filtered_exact_share * n_rows))


@dataclass(frozen=True)
class _Allowed:
    """Rows a search may return: a mask (None = all), its count, and the row list when it is short.

    Below a quarter of the rows, gathering just those rows and scoring them beats scoring all rows
    and masking; the row list is kept so each query does not rebuild it.
    """

    mask: np.ndarray | None
    count: int
    rows: np.ndarray | None = None

    @classmethod
    def of(cls, mask: np.ndarray | None, count: int, n: int) -> _Allowed:
        rows = np.flatnonzero(mask) if mask is not None and count * 4 < n else None
        return cls(mask, count, rows)


def _supersedes(record: ItemRecord, sequencer: str, deleted: bool) -> bool:
    """True when ``record`` is newer than a state with ``sequencer`` (on a tie a tombstone wins)."""
    new_key, old_key = sequencer_key(record.sequencer), sequencer_key(sequencer)
    if new_key != old_key:
        return new_key > old_key
    return record.deleted and not deleted


class IndexView:
    """Read-only view of ``snapshot`` (may be None) overridden by ``deltas``.

    Build one per (snapshot, delta set); it is cheap (work proportional to the number of deltas,
    plus one bool[n] when deltas hide snapshot rows) and safe to share between threads. It implements
    :class:`catalens.ports.IndexReader`, the port the services read an index through.
    """

    version: str  # the snapshot's version, plus a digest of the deltas over it
    max_candidates: int | None = None  # exact or graph search returns as many hits as asked for

    def __init__(
        self,
        snapshot: Snapshot | None,
        deltas: Sequence[ItemRecord] = (),
        *,
        params: SearchParams | None = None,
        query_domain: QueryDomain | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.params = params or SearchParams()
        self._model_space_domain = query_domain
        self._calibration_fixed: tuple[QueryDomain, FixedVectors] | None = None  # see _calibration_vectors
        latest: dict[str, ItemRecord] = {}
        for record in deltas:
            if is_newer(record, latest.get(record.item_id)):
                latest[record.item_id] = record

        ids = sorted(latest)
        rows = snapshot.rows_of(ids) if snapshot is not None else np.full(len(ids), -1, dtype=np.int64)
        overrides: dict[str, ItemRecord] = {}
        hidden: list[int] = []
        for item_id, row in zip(ids, rows.tolist(), strict=True):
            record = latest[item_id]
            if row >= 0:
                if not _supersedes(record, snapshot.sequencer_of(row), False):
                    continue  # a stale delta: the snapshot already holds a newer state
                hidden.append(row)
            elif snapshot is not None:
                tombstone = snapshot.tombstone_of(item_id)
                if tombstone is not None and not _supersedes(record, tombstone.sequencer, True):
                    continue  # created before a delete that is already compacted
            overrides[item_id] = record
        self._overrides = overrides
        self._hidden_rows = np.asarray(sorted(hidden), dtype=np.int64)
        self._visible: np.ndarray | None = None
        if snapshot is not None and self._hidden_rows.size:
            visible = np.ones(len(snapshot), dtype=bool)
            visible[self._hidden_rows] = False
            visible.setflags(write=False)
            self._visible = visible

        # An empty snapshot that never held a vector (model_dim 0) does not fix the dimension yet.
        self._model_dim = snapshot.model_dim if snapshot is not None and snapshot.model_dim else None
        self._snapshot_space = snapshot is not None and bool(snapshot.model_dim)
        live = [r for r in overrides.values() if not r.deleted]
        for record in live:
            if record.vector is None:
                raise ValueError(f"delta for item {record.item_id!r} is not deleted but has no vector")
            dim = int(np.asarray(record.vector).shape[-1])
            if self._model_dim is None:
                self._model_dim = dim
            if dim != self._model_dim:
                raise ModelError(
                    f"delta vector of item {record.item_id!r} has {dim} dims, the index expects {self._model_dim}",
                    code="model_mismatch",
                )
        self._delta_records = live
        self._delta_position = {r.item_id: i for i, r in enumerate(live)}
        if live:
            self._delta_vectors = self._project(np.stack([np.asarray(r.vector, dtype=np.float32) for r in live]))
        else:
            self._delta_vectors = np.empty((0, snapshot.dim if self._snapshot_space else 0), dtype=np.float32)
        self._delta_vectors.setflags(write=False)

        snapshot_live = len(snapshot) if snapshot is not None else 0
        self._len = snapshot_live - int(self._hidden_rows.size) + len(live)
        self._allowed_cache: OrderedDict[Filter, _Allowed] = OrderedDict()
        self._unfiltered: _Allowed | None = None
        self._lock = threading.Lock()
        digest = hashlib.sha256()
        for item_id in ids:
            digest.update(f"{item_id}\0{latest[item_id].sequencer}\0".encode())
        base = snapshot.version if snapshot is not None else "empty"
        self.version = f"{base}+{digest.hexdigest()[:10]}" if ids else base

    # ---- identity and lookups ----------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def stage(self) -> str:
        """``full``, or ``first`` while a compact snapshot's full vectors are still loading (approximate scores)."""
        return self.snapshot.stage if self.snapshot is not None else "full"

    @property
    def words(self) -> str:
        """The word index: ``ready`` (stored with the version and loaded), ``loading`` (text queries answer 503
        until the second stage is in) or ``lazy`` (an older version: built on the first text query)."""
        snapshot = self.snapshot
        if snapshot is None or snapshot.text is not None:
            return "ready"
        return "loading" if snapshot.text_pending else "lazy"

    @property
    def model_fingerprint(self) -> str | None:
        """Fingerprint of the model the snapshot was built with (None without a snapshot)."""
        return self.snapshot.model_fingerprint if self.snapshot is not None else None

    @property
    def index_space(self) -> str:
        """Name of the space vectors live in: model fingerprint + projection fingerprint.

        Compactions keep it; it changes only on a rebuild with another model or projection, which is
        when stored index-space vectors (profiles) stop meaning anything.
        """
        if self.snapshot is None:
            return ""
        projection = self.snapshot.projection
        return f"{self.snapshot.model_fingerprint}/{projection.fingerprint if projection is not None else 'identity'}"

    def field_names(self) -> frozenset[str]:
        """Every product field name present in the index (snapshot and live deltas): what a filter may name.

        Fresh items count too: a field only a delta carries is filterable before the builder compacts it.
        """
        names: set[str] = set()
        if self.snapshot is not None:
            columns = self.snapshot.columns  # a snapshot that predates its recorded field names still has columns
            names.update(self.snapshot.field_names, columns.numeric, columns.codes)
        for record in self._delta_records:
            names.update(record.fields)
        return frozenset(names)

    @property
    def dim(self) -> int:
        """Index-space dimensionality (0 for an empty view)."""
        return self.snapshot.dim if self._snapshot_space else int(self._delta_vectors.shape[1])

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        if self._snapshot_space:
            return self.snapshot.project(vectors)
        if self._model_dim is not None and vectors.shape[-1] != self._model_dim:
            raise ModelError(
                f"query vector has {vectors.shape[-1]} dims, the index expects {self._model_dim}",
                code="model_mismatch",
            )
        return normalise(vectors)

    def get(self, item_id: str) -> IndexedItem | None:
        """The item's current state (vector in index space), or None when absent or deleted."""
        record = self._overrides.get(item_id)
        if record is not None:
            if record.deleted:
                return None
            return IndexedItem(
                item_id=record.item_id,
                vector=self._delta_vectors[self._delta_position[item_id]],
                fields=record.fields,
                image_key=record.image_key,
                source_etag=record.source_etag,
                sequencer=record.sequencer,
                updated_at=record.updated_at,
            )
        if self.snapshot is None:
            return None
        row = self.snapshot.row_of(item_id)
        return None if row is None else self.snapshot.item(row)

    def vector_of(self, item_id: str) -> np.ndarray | None:
        """The item's unit-norm vector in index space (what profiles store), or None."""
        record = self._overrides.get(item_id)
        if record is not None:
            return None if record.deleted else self._delta_vectors[self._delta_position[item_id]]
        if self.snapshot is None:
            return None
        row = self.snapshot.row_of(item_id)
        return None if row is None else self.snapshot.table.rows(np.array([row]))[0]

    def project(self, query: np.ndarray) -> np.ndarray:
        """A model-space vector in this view's index space (unit norm)."""
        return self._project(np.asarray(query, dtype=np.float32))

    # ---- query-domain calibration --------------------------------------------------------
    @cached_property
    def query_domain(self) -> QueryDomain | None:
        """The query domain to calibrate photo queries with, in index space (None: search uncalibrated).

        The cache hands in the reference as stored (model space); with a projection its rows are projected like
        any query. A reference of another width than the model's is left out (logged), never an error.
        """
        domain = self._model_space_domain
        if domain is None or self._model_dim is None:
            return None
        if domain.dim != self._model_dim:
            log.warning(
                "query domain has %d dims, the index's model %d: searching uncalibrated", domain.dim, self._model_dim
            )
            return None
        if self._snapshot_space and self.snapshot.projection is not None:
            return QueryDomain(self.snapshot.project(domain.reference), beta=domain.beta, seeded=domain.seeded)
        return domain

    @cached_property
    def catalog_mean(self) -> np.ndarray | None:
        """Mean of the live item vectors in index space (snapshot rows the deltas leave visible, plus the deltas).

        What :meth:`catalens.query_domain.QueryDomain.calibrate` centres items on; None for an empty view.
        """
        if self._len == 0:
            return None
        total = np.zeros(self.dim, dtype=np.float64)
        if self._snapshot_space and len(self.snapshot):
            total += _snapshot_sum(self.snapshot)
            if self._hidden_rows.size:
                total -= self.snapshot.table.rows(self._hidden_rows).sum(axis=0, dtype=np.float64)
        if len(self._delta_vectors):
            total += self._delta_vectors.sum(axis=0, dtype=np.float64)
        mean = (total / self._len).astype(np.float32)
        mean.setflags(write=False)
        return mean

    def _calibration_vectors(self, domain: QueryDomain) -> FixedVectors:
        """The catalog mean (this view's own) prepared beside the domain's rows (shared by every view of the table),
        so a pool's codes are read and cast once: one ``[dim, 2 + R]`` product per calibrated search."""
        cached = self._calibration_fixed
        if cached is not None and cached[0] is domain:
            return cached[1]
        table = self.snapshot.table
        mean, shared = table.prepare_fixed(self.catalog_mean[None, :]), _prepared_domain(table, domain)
        prepared = FixedVectors(
            np.vstack([mean.matrix, shared.matrix]),
            *(
                None if part is None else np.concatenate([part, shared_part], axis=-1)
                for part, shared_part in (
                    (mean.offset, shared.offset),
                    (mean.coarse, shared.coarse),
                    (mean.residual, shared.residual),
                )
            ),
        )
        self._calibration_fixed = (domain, prepared)  # a race only computes it twice
        return prepared

    def calibration_terms(self, item_ids: Sequence[str], domain: QueryDomain) -> tuple[np.ndarray, np.ndarray] | None:
        """``(norms, terms)`` of the named live items for :meth:`QueryDomain.calibrate_terms`: float32 ``[n]``
        squared norms and ``[n, 2 + R]`` dot products with the catalog mean and the domain's term rows, computed
        from the snapshot's codes (a compact row is never rebuilt). None when an item is not live here or the domain
        is of another width than this index's space."""
        mean = self.catalog_mean
        if mean is None or domain.dim != self.dim:
            return None
        norms = np.empty(len(item_ids), dtype=np.float32)
        terms = np.empty((len(item_ids), 2 + len(domain)), dtype=np.float32)
        fresh: list[tuple[int, int]] = []  # (position in item_ids, delta position)
        stored: list[tuple[int, str]] = []  # (position in item_ids, item id in the snapshot)
        for at, item_id in enumerate(item_ids):
            if item_id not in self._overrides:
                stored.append((at, item_id))
            elif (delta := self._delta_position.get(item_id)) is not None:
                fresh.append((at, delta))
            else:
                return None  # deleted
        if stored and not self._snapshot_space:
            return None
        if fresh:
            at, delta = (np.array(column, dtype=np.int64) for column in zip(*fresh, strict=True))
            norms[at], terms[at] = domain.terms(self._delta_vectors[delta], mean)
        if stored:
            at = np.array([position for position, _ in stored], dtype=np.int64)
            rows = self.snapshot.rows_of([item_id for _, item_id in stored])
            if (rows < 0).any():
                return None
            norms[at], terms[at] = self.snapshot.table.dots_with(rows, self._calibration_vectors(domain))
        return norms, terms

    # ---- search --------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        filters: Filter | None = None,
        exclude: Collection[str] = frozenset(),
        strategy: Strategy = "auto",
        query_in_index_space: bool = False,
        vectors: bool = True,
    ) -> list[Hit]:
        """The ``k`` most similar live items, best first (cosine similarity in index space).

        Parameters
        ----------
        query:
            float32[d_model], a model-space embedding (set ``query_in_index_space`` when it is
            already projected, e.g. a profile vector).
        k:
            Number of hits wanted; fewer come back only when fewer items pass the filter.
        filters:
            Applied before the top ``k`` is cut.
        exclude:
            Item ids never to return (e.g. the query item itself).
        strategy:
            "auto" (graph when the snapshot has one and the filter is not very selective),
            "exact", or "graph" (for benchmarks).
        vectors:
            False leaves snapshot hits' ``vector`` None: a compact row is rebuilt through the 5 MB projection,
            ~1 ms for ten hits at 1M, which a search whose caller reads no vector need not pay.
        """
        if k <= 0 or self._len == 0:
            return []
        q = np.asarray(query, dtype=np.float32)
        q = normalise(q) if query_in_index_space else self._project(q)
        if q.shape[-1] != self.dim:
            raise ModelError(f"query has {q.shape[-1]} dims in index space, expected {self.dim}", code="model_mismatch")
        filters = filters or None
        candidates: list[tuple[float, str, int, int]] = []  # (score, item_id, source, position)
        if self.snapshot is not None and len(self.snapshot):
            rows, scores = self._search_snapshot(q, k, filters, exclude, strategy)
            ids = self.snapshot.item_ids[rows]
            candidates.extend(
                (s, i.decode(), 0, r) for s, i, r in zip(scores.tolist(), ids.tolist(), rows.tolist(), strict=True)
            )
        if self._delta_records:
            candidates.extend(self._search_deltas(q, k, filters, exclude))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        return self._hits(candidates[:k], vectors=vectors)

    # ---- words ---------------------------------------------------------------------------
    def _text_index(self) -> LexicalIndex | None:
        snapshot = self.snapshot
        if snapshot is None or not len(snapshot):
            return None
        records = snapshot.records
        return snapshot_text_index(snapshot, lambda: (records.document(row)["fields"] for row in range(len(records))))

    def search_text(
        self,
        text: str,
        k: int,
        *,
        filters: Filter | None = None,
        exclude: Collection[str] = frozenset(),
        vectors: bool = True,
    ) -> list[Hit]:
        """The ``k`` live items whose words (:mod:`catalens.text.lexical`) best match ``text``, best first.

        ``score`` is BM25 (unbounded, comparable within one query); items without a query term are not returned.
        ``vectors=False`` leaves snapshot hits' ``vector`` None (decoding compact rows costs more than the search).
        """
        terms = query_terms(text)
        if k <= 0 or self._len == 0 or not terms:
            return []
        index = self._text_index()
        candidates: list[tuple[float, str, int, int]] = []
        if index is not None:
            allowed = self._allowed(filters or None).mask
            if allowed is None:
                allowed = self._visible
            excluded = self.snapshot.rows_of(list(exclude)) if exclude else np.empty(0, np.int64)
            rows, scores = index.search_terms(terms, k, allowed=allowed, exclude=excluded[excluded >= 0])
            ids = self.snapshot.item_ids[rows]
            candidates.extend(
                (s, i.decode(), 0, r) for s, i, r in zip(scores.tolist(), ids.tolist(), rows.tolist(), strict=True)
            )
        positions = [
            i
            for i, r in enumerate(self._delta_records)
            if r.item_id not in exclude and (filters is None or filters.matches(r.fields))
        ]
        if positions:
            scores = fresh_scores(index, terms, [self._delta_records[i].fields for i in positions])
            candidates.extend(
                (float(s), self._delta_records[i].item_id, 1, i)
                for s, i in zip(scores.tolist(), positions, strict=True)
                if s > 0
            )
        candidates.sort(key=lambda c: (-c[0], c[1]))
        return self._hits(candidates[:k], vectors=vectors)

    def _hits(self, candidates: Sequence[tuple[float, str, int, int]], *, vectors: bool = True) -> list[Hit]:
        """Hits for ranked candidates, the snapshot rows' vectors decoded in one call: a compact table rebuilds a
        row from its first stage with a pass over the 5 MB projection, and one call for ten hits instead of ten
        took ~1.9 ms off a 1M search (docs/operations.md)."""
        rows = [c[3] for c in candidates if c[2] == 0] if vectors else []
        decoded = dict(zip(rows, self.snapshot.table.rows(np.asarray(rows)), strict=True)) if rows else {}
        hits = []
        for score, item_id, source, position in candidates:
            if source == 0:
                doc = self.snapshot.records.document(position)
                hits.append(Hit(item_id, score, doc["fields"], doc["image_key"], vector=decoded.get(position)))
            else:
                record = self._delta_records[position]
                hits.append(Hit(item_id, score, record.fields, record.image_key, vector=self._delta_vectors[position]))
        return hits

    def text_scores(self, text: str, item_ids: Sequence[str]) -> np.ndarray:
        """BM25 scores of ``text`` for the named items (0 for an item without a query term, absent or deleted)."""
        terms = query_terms(text)
        out = np.zeros(len(item_ids), dtype=np.float32)
        if not terms or not item_ids:
            return out
        index = self._text_index()
        fresh = [(n, r) for n, i in enumerate(item_ids) if (r := self._overrides.get(i)) is not None and not r.deleted]
        if fresh:
            out[[n for n, _ in fresh]] = fresh_scores(index, terms, [r.fields for _, r in fresh])
        if index is not None:
            rest = [n for n, i in enumerate(item_ids) if i not in self._overrides]
            rows = self.snapshot.rows_of([item_ids[n] for n in rest]) if rest else np.empty(0, np.int64)
            known = rows >= 0
            if known.any():
                order = np.argsort(rows[known])
                picked = np.asarray(rest)[known][order]
                out[picked] = index.score_rows(terms, rows[known][order].astype(np.int32))
        return out

    def _search_deltas(
        self, q: np.ndarray, k: int, filters: Filter | None, exclude: Collection[str]
    ) -> list[tuple[float, str, int, int]]:
        positions = [
            i
            for i, r in enumerate(self._delta_records)
            if r.item_id not in exclude and (filters is None or filters.matches(r.fields))
        ]
        if not positions:
            return []
        chosen = np.asarray(positions, dtype=np.int64)
        scores = self._delta_vectors[chosen] @ q
        top = _top_k(scores, k)
        return [(float(scores[i]), self._delta_records[chosen[i]].item_id, 1, int(chosen[i])) for i in top]

    def _allowed(self, filters: Filter | None) -> _Allowed:
        """Snapshot rows that are visible and pass ``filters`` (cached per filter)."""
        snapshot = self.snapshot
        if filters is None:
            if self._unfiltered is None:
                count = len(snapshot) - int(self._hidden_rows.size)
                self._unfiltered = _Allowed.of(self._visible, count, len(snapshot))
            return self._unfiltered
        with self._lock:
            if filters in self._allowed_cache:
                self._allowed_cache.move_to_end(filters)
                return self._allowed_cache[filters]
        mask = snapshot.filter_mask(filters)
        if self._visible is not None:
            mask = mask & self._visible
            mask.setflags(write=False)
        entry = _Allowed.of(mask, int(np.count_nonzero(mask)), len(snapshot))
        with self._lock:
            self._allowed_cache[filters] = entry
            while len(self._allowed_cache) > 32:
                self._allowed_cache.popitem(last=False)
        return entry

    def _search_snapshot(
        self, q: np.ndarray, k: int, filters: Filter | None, exclude: Collection[str], strategy: Strategy
    ) -> tuple[np.ndarray, np.ndarray]:
        snapshot = self.snapshot
        allowed_rows = self._allowed(filters)
        allowed, n_allowed = allowed_rows.mask, allowed_rows.count
        if n_allowed == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        excluded_rows = snapshot.rows_of(list(exclude)) if exclude else np.empty(0, np.int64)
        excluded_rows = np.unique(excluded_rows[excluded_rows >= 0])
        table = snapshot.table
        # A compact table scores a wider pool on its first stage and re-scores it with the full vectors.
        pool_k = max(2 * k, k + RERANK_EXTRA) if table.reranks else k
        prepared = table.prepare(q)
        first_query = prepared.first
        searcher = snapshot.graph_searcher
        use_graph = searcher is not None and (
            strategy == "graph" or (strategy == "auto" and n_allowed > self.params.filtered_exact_limit(len(snapshot)))
        )
        rows = scores = None
        if use_graph:
            # the walk has scored its whole pool anyway: re-scoring all of it costs ~0.1 ms and finds more
            want = (max(pool_k, self.params.ef) if table.reranks else pool_k) + int(excluded_rows.size)
            pool = None
            if allowed is not None and n_allowed < len(snapshot):
                # the walk passes through rows the filter rejects: keep proportionally more candidates
                pool = min(self.params.max_ef, math.ceil(4 * self.params.ef * len(snapshot) / n_allowed))
            rows, scores = searcher.search(
                first_query,
                want,
                ef=max(self.params.ef, want),
                expand=self.params.expand,
                probe=self.params.probe,
                allowed=allowed,
                pool=pool,
            )
            if excluded_rows.size:
                keep = ~np.isin(rows, excluded_rows)
                rows, scores = rows[keep], scores[keep]
            excluded_allowed = int(excluded_rows.size if allowed is None else np.count_nonzero(allowed[excluded_rows]))
            reachable = min(k, n_allowed - excluded_allowed)
            if rows.size < reachable:
                rows = scores = None  # the walk found fewer allowed rows than exist: answer exactly rather than short
        if rows is None:
            scale = table.first_stage_scale
            row_query = first_query if scale is None else (first_query * scale).astype(np.float32)
            rows, scores = _exact(table.first_stage, row_query, pool_k, allowed_rows, excluded_rows)
        if table.reranks and rows.size:  # before the chunks load, rows() rebuilds approximate vectors
            scores = table.scores(rows, prepared)
            top = _top_k(scores, k)
            return rows[top], scores[top]
        return rows[:k], scores[:k]


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores, best first (ties broken by index)."""
    part = np.argpartition(scores, scores.size - k)[-k:] if scores.size > k else np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))]


def _exact(
    vectors: np.ndarray, q: np.ndarray, k: int, allowed: _Allowed, excluded_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over the allowed rows: one matmul over all rows, or over the allowed subset when small."""
    if allowed.rows is not None:
        rows = allowed.rows
        if excluded_rows.size:
            rows = rows[~np.isin(rows, excluded_rows)]
        scores = dot_rows(vectors, q, rows)
        top = _top_k(scores, k)
        return rows[top], scores[top]
    scores = dot_rows(vectors, q)
    if allowed.mask is not None:
        scores[~allowed.mask] = -np.inf
    if excluded_rows.size:
        scores[excluded_rows] = -np.inf
    top = _top_k(scores, k)
    top = top[np.isfinite(scores[top])]
    return top.astype(np.int64), scores[top]
