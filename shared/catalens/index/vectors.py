"""How a snapshot holds its item vectors: as float32, or compact (int8, searched through a small first stage).

At the serving dimension (3,984) a float32 vector is 15.9 KB, so a million items do not fit one search Lambda.
The compact layout keeps, per item:

* a **first stage**: the item's vector projected by a PCA the builder learned from the catalog (320 axes by
  default), renormalised and stored as int8 with one scale per axis (320 B), plus the projection's length before
  renormalising (float16, 2 B, to rebuild an approximate full vector from it). The graph walk and small exact
  scans score these;
* the **full vector** as int8 with one scale per model dimension (3,984 B), in chunk files of
  :data:`CHUNK_ROWS` *slots*. What is quantised is the *residual*: the vector minus its first-stage
  reconstruction (``mean + (code · step · length) @ componentsᵀ``, rebuilt from the first-stage bytes the item
  already has). The PCA takes the directions of largest spread, so the residual's range per dimension, hence
  the int8 step and the score error, is several times smaller than the vector's, at no extra byte per item
  (``catalens bench index``, docs/operations.md). Snapshots written before keep direct codes (``full: direct``).
  Each row's residual code also has its own scale (float16, 2 B, beside the first stage): the row's largest value
  codes to ±127, where one step per dimension for the whole catalog left most rows a fraction of the range
  (``full: residual-scaled``; snapshots without scales keep coding without them).
  An item keeps its slot across compactions, so a chunk none of whose items changed keeps its bytes: the builder
  copies it instead of uploading it, and a search process swapping versions shares it instead of loading it again.

A search scores a candidate pool on the first stage and re-ranks it with the full vectors (:meth:`scores`, without
decoding them: ``q·mean + first-stage term + residual codes · (step ∘ q)``), so its answers and scores match float32
search (scores within ~1e-4 of the float32 cosines). Until the full chunks are loaded (the first seconds after a
cold start) the table answers from the first stage alone: :attr:`stage` says which.

Both layouts implement one small interface (:class:`VectorTable`); only numpy is imported (query path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np

from catalens.index.reduce import Projection, normalise

FULL_SAMPLE = 8192  # rows a codec is learned from once the catalog has them (PCA + scales: seconds)
CHUNK_ROWS = 4096  # slots per full-vector chunk: 16.3 MB at 3,984 dims, small enough to copy or share alone
# First-stage axes of a new compact snapshot. 320 rather than 256: on the calibrated 100k synthetic set the
# first stage decides most of the recall (an exact scan of 106 candidates holds 0.989 of the float32 top 10 at
# 256 axes, 0.995 at 320), for 64 B per item (resident 4,591 B/item at 100k, within 4,608). Snapshots built
# before keep their axes: a compaction keeps the previous codec, so unchanged items keep their bytes.
COARSE_DIM = 320
CHUNK_PREFIX = "full-chunk."  # the files a cold start can answer without (loaded in the background)

Layout = Literal["float32", "compact"]
Stage = Literal["first", "full"]


_DOT_BLOCK = 32_768  # rows per np.dot of float32 rows: bounds the copy a gather of rows makes
# Bytes of the float32 copy np.dot makes of one block of int8 codes. A copy that stays in a core's L2 cache is read
# back from it by the BLAS call: a million-row scan at 320 axes took 59 ms in blocks of 1 MiB against 270 ms in
# blocks of 32,768 rows (40 MB), 100k rows 5.9 against 30 ms (one thread, alternating; 2 MiB blocks were as slow).
_CAST_BLOCK_BYTES = 1 << 20


def dot_rows(vectors: np.ndarray, query: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 ``vectors[rows] · query`` (all rows when ``rows`` is None), in blocks.

    For int8 codes np.dot casts a block to float32 and makes one BLAS call: 1.3-2.8x faster than the ``@``
    operator, which runs a mixed-type loop (walk steps, 20k-row filtered scans, full scans, measured alternating).
    Blocks of codes are cast in pieces small enough to stay in cache; float32 rows need no cast, and their blocks
    only bound what a gather of ``rows`` copies.
    """
    n = vectors.shape[0] if rows is None else rows.size
    block_rows = _DOT_BLOCK if vectors.dtype == np.float32 else max(16, _CAST_BLOCK_BYTES // (4 * vectors.shape[1]))
    if n <= block_rows:
        block = vectors if rows is None else np.take(vectors, rows, axis=0)
        return np.asarray(np.dot(block, query), dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        block = vectors[start:stop] if rows is None else np.take(vectors, rows[start:stop], axis=0)
        out[start:stop] = np.dot(block, query)
    return out


def chunk_file(index: int) -> str:
    return f"{CHUNK_PREFIX}{index:05d}.npy"


def is_chunk_file(name: str) -> bool:
    """True for the files of a snapshot a search can start without (the full-vector chunks)."""
    return name.startswith(CHUNK_PREFIX)


class VectorTable(Protocol):
    """Item vectors by snapshot row, as the search reads them."""

    layout: Layout

    @property
    def dim(self) -> int: ...

    @property
    def stage(self) -> Stage: ...

    def __len__(self) -> int: ...

    @property
    def first_stage(self) -> np.ndarray:
        """The rows the first stage scores (float32 unit rows, or int8 codes), in snapshot row order."""
        ...

    @property
    def first_stage_scale(self) -> np.ndarray | None:
        """Per-axis scale of int8 first-stage codes (None when they are float32)."""
        ...

    def first_stage_query(self, query: np.ndarray) -> np.ndarray:
        """An index-space query (unit, float32[dim]) in first-stage space (unit)."""
        ...

    def prepare(self, query: np.ndarray) -> PreparedQuery:
        """What a search needs of a query (unit, float32[dim]), computed once: its first-stage form and more."""
        ...

    def scores(self, rows: np.ndarray, query: PreparedQuery) -> np.ndarray:
        """float32[len(rows)]: the rows' scores against the query with the best vectors this stage has."""
        ...

    def prepare_fixed(self, vectors: np.ndarray) -> FixedVectors:
        """What :meth:`dots_with` needs of fixed vectors (unit or not, float32[K, dim]), computed once for many rows."""
        ...

    def dots_with(self, rows: np.ndarray, fixed: FixedVectors) -> tuple[np.ndarray, np.ndarray]:
        """(float32[len(rows)] squared norms, float32[len(rows), K] dot products with the fixed vectors) of the rows'
        vectors: what calibration needs of a pool, without rebuilding the vectors where the codes allow."""
        ...

    @property
    def reranks(self) -> bool:
        """True when first-stage scores are approximate and a pool must be re-scored with :meth:`rows`."""
        ...

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32[len(rows), dim]: the rows' vectors in index space (the best this stage has)."""
        ...

    def total(self) -> np.ndarray:
        """float64[dim]: the sum of every row's vector (the catalog mean's numerator)."""
        ...


@dataclass(frozen=True, eq=False)
class PreparedQuery:
    """A query as a table scores it: ``full`` (unit, model space), ``first`` (first-stage space, unit) and, for a
    compact table with residual codes, the terms that score a row without decoding it."""

    full: np.ndarray
    first: np.ndarray
    offset: float = 0.0  # q · mean of the first-stage projection
    coarse: np.ndarray | None = None  # (componentsᵀ q) / scale: scores a first-stage reconstruction
    residual: np.ndarray | None = None  # step ∘ q: scores int8 residual codes


@dataclass(frozen=True, eq=False)
class FixedVectors:
    """Fixed vectors as a table scores rows against them: ``matrix`` (float32[K, dim]) and, for a compact table
    with residual codes, the same terms as :class:`PreparedQuery` with one column per vector."""

    matrix: np.ndarray
    offset: np.ndarray | None = None  # [K]: vector · mean of the first-stage projection
    coarse: np.ndarray | None = None  # [c, K]: (componentsᵀ vector) / scale
    residual: np.ndarray | None = None  # [dim, K]: step ∘ vector


def _squared_norms(vectors: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors, vectors).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Quantiser:
    """Symmetric int8 quantisation with one step per axis: ``x ≈ code * step``.

    Fitted once (the largest magnitude seen per axis over a sample) and then kept by every compaction, so an
    unchanged item gets the same bytes in every version; values beyond the fitted range saturate at ±127.
    """

    step: np.ndarray  # float32[d]

    @classmethod
    def fit(cls, sample: np.ndarray, *, headroom: float = 1.0) -> Quantiser:
        """Steps that map ``headroom`` × the sample's largest magnitude per axis to ±127."""
        peak = np.abs(np.asarray(sample, dtype=np.float32)).max(axis=0) * np.float32(headroom)
        return cls(np.maximum(peak / 127.0, np.float32(1e-8)).astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x, dtype=np.float32) / self.step), -127, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * self.step


@dataclass(frozen=True, eq=False)
class DenseVectors:
    """float32 unit rows in index space: exact, 4 bytes per dimension."""

    vectors: np.ndarray
    layout: Layout = field(default="float32", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", np.ascontiguousarray(self.vectors, dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def stage(self) -> Stage:
        return "full"

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def first_stage(self) -> np.ndarray:
        return self.vectors

    @property
    def first_stage_scale(self) -> np.ndarray | None:
        return None

    def first_stage_query(self, query: np.ndarray) -> np.ndarray:
        return query

    def prepare(self, query: np.ndarray) -> PreparedQuery:
        return PreparedQuery(full=query, first=query)

    def scores(self, rows: np.ndarray, query: PreparedQuery) -> np.ndarray:
        return self.vectors[rows] @ query.full

    def prepare_fixed(self, vectors: np.ndarray) -> FixedVectors:
        return FixedVectors(np.ascontiguousarray(vectors, dtype=np.float32))

    def dots_with(self, rows: np.ndarray, fixed: FixedVectors) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.vectors[np.asarray(rows, dtype=np.int64)]
        return _squared_norms(vectors), vectors @ fixed.matrix.T

    @property
    def reranks(self) -> bool:
        return False

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    @cached_property
    def _total(self) -> np.ndarray:
        return self.vectors.sum(axis=0, dtype=np.float64)

    def total(self) -> np.ndarray:
        return self._total

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vectors.npy": self.vectors}

    def describe(self) -> dict[str, Any]:
        return {"layout": "float32"}


@dataclass(frozen=True, eq=False)
class CompactVectors:
    """int8 full vectors in slot chunks plus an int8 PCA first stage; see the module docstring."""

    coarse: Projection  # model/index space -> first-stage space (kind "pca")
    coarse_quantiser: Quantiser
    coarse_codes: np.ndarray  # int8[n, c], unit rows before quantising
    coarse_lengths: np.ndarray  # float16[n]: |(x - mean) @ components| before renormalising
    slots: np.ndarray  # int32[n]: row -> slot of its full vector
    full_quantiser: Quantiser
    full_total: np.ndarray  # float64[d]: sum of the decoded full vectors of all rows
    chunk_rows: int = CHUNK_ROWS
    chunks: tuple[np.ndarray, ...] | None = None  # int8[<=chunk_rows, d] each; None until loaded
    fitted_rows: int = FULL_SAMPLE  # rows the codec was learned from (CompactCodec.outgrown)
    residual: bool = False  # full codes quantise the vector minus its first-stage reconstruction
    full_scales: np.ndarray | None = None  # float16[n]: a row's full code decodes as code · step · scale (None: 1)
    layout: Layout = field(default="compact", init=False)

    def __post_init__(self) -> None:
        n = self.coarse_codes.shape[0]
        if self.coarse_lengths.shape != (n,) or self.slots.shape != (n,):
            raise ValueError("compact vector arrays disagree on the number of rows")
        if self.full_scales is not None and self.full_scales.shape != (n,):
            raise ValueError("full-vector scales disagree with the number of rows")
        if self.coarse_codes.ndim != 2 or self.coarse_codes.shape[1] != self.coarse.output_dim:
            raise ValueError("first-stage codes do not match the first-stage projection")
        if self.full_quantiser.step.shape != (self.coarse.input_dim,):
            raise ValueError("full-vector scale does not match the model dimension")
        if self.chunks is not None:
            for chunk in self.chunks:
                if chunk.ndim != 2 or chunk.shape[1] != self.dim or chunk.shape[0] > self.chunk_rows:
                    raise ValueError("a full-vector chunk has the wrong shape")
            capacity = sum(chunk.shape[0] for chunk in self.chunks[:-1]) if self.chunks else 0
            if n and (capacity + (self.chunks[-1].shape[0] if self.chunks else 0)) <= int(self.slots.max()):
                raise ValueError("a row's slot lies beyond the full-vector chunks")
            if any(chunk.shape[0] != self.chunk_rows for chunk in self.chunks[:-1]):
                raise ValueError("only the last full-vector chunk may be short")

    @property
    def dim(self) -> int:
        return self.coarse.input_dim

    @property
    def stage(self) -> Stage:
        return "full" if self.chunks is not None else "first"

    def __len__(self) -> int:
        return int(self.coarse_codes.shape[0])

    @property
    def n_chunks(self) -> int:
        return chunks_for(int(self.slots.max()) + 1 if len(self) else 0, self.chunk_rows)

    @property
    def first_stage(self) -> np.ndarray:
        return self.coarse_codes

    @property
    def first_stage_scale(self) -> np.ndarray | None:
        return self.coarse_quantiser.step

    def first_stage_query(self, query: np.ndarray) -> np.ndarray:
        return self.coarse.apply(query)

    def prepare(self, query: np.ndarray) -> PreparedQuery:
        q = np.asarray(query, dtype=np.float32)
        projected = q @ self.coarse.components  # one pass over the components serves both stages
        first = normalise((projected - self._mean_projected) * self.coarse.scale)
        if not self.residual:
            return PreparedQuery(full=q, first=first)
        return PreparedQuery(
            full=q,
            first=first,
            offset=float(q @ self.coarse.mean),
            coarse=(projected / self.coarse.scale).astype(np.float32),
            residual=q * self.full_quantiser.step,
        )

    @cached_property
    def _mean_projected(self) -> np.ndarray:
        return self.coarse.mean @ self.coarse.components

    def scores(self, rows: np.ndarray, query: PreparedQuery) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.chunks is None or not self.residual:
            return self.rows(rows) @ query.full
        return self._residual_scores(rows, query.coarse, query.residual, np.float32(query.offset))

    def prepare_fixed(self, vectors: np.ndarray) -> FixedVectors:
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if not self.residual:
            return FixedVectors(matrix)
        return FixedVectors(
            matrix,
            offset=matrix @ self.coarse.mean,
            coarse=np.ascontiguousarray((matrix @ self.coarse.components).T / self.coarse.scale[:, None]),
            residual=np.ascontiguousarray((matrix * self.full_quantiser.step).T),
        )

    def dots_with(self, rows: np.ndarray, fixed: FixedVectors) -> tuple[np.ndarray, np.ndarray]:
        """Residual codes are scored as :meth:`scores` scores them: for a calibration pool of 50 rows against 258
        vectors at 3,984 dimensions, one product of ~1.2 ms where rebuilding the 50 vectors through the 5 MB projection
        took 1.4 ms and scoring them 0.8 more. Their squared norms are 1: the rows code unit vectors, and the float32
        vector's norm is what the decoded one approximates."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.chunks is None or fixed.residual is None:
            vectors = self.rows(rows)  # the first stage's rebuilt vectors, or direct codes decoded
            return _squared_norms(vectors), vectors @ fixed.matrix.T
        dots = self._residual_scores(rows, fixed.coarse, fixed.residual, fixed.offset)
        return np.ones(rows.size, dtype=np.float32), dots

    def _residual_scores(
        self, rows: np.ndarray, coarse: np.ndarray, residual: np.ndarray, offset: np.ndarray | np.float32
    ) -> np.ndarray:
        """Residual rows scored against one query (``coarse`` [c], ``residual`` [d], a scalar ``offset``) or against
        K fixed vectors ([c, K], [d, K], [K]): first-stage point · coarse + code · residual × row scale + offset."""
        codes = self._full_codes(rows)
        products = dot_rows(codes, residual) if residual.ndim == 1 else codes.astype(np.float32) @ residual
        if self.full_scales is not None:
            scales = self.full_scales[rows].astype(np.float32)
            products *= scales if products.ndim == 1 else scales[:, None]
        return (self._first_stage_points(rows) @ coarse + products + offset).astype(np.float32)

    @property
    def reranks(self) -> bool:
        return True

    def with_chunks(self, chunks: Sequence[np.ndarray]) -> CompactVectors:
        """The same table with its full vectors (the second stage of a load)."""
        if len(chunks) != self.n_chunks:
            raise ValueError(f"expected {self.n_chunks} full-vector chunks, got {len(chunks)}")
        return replace(self, chunks=tuple(chunks))

    def without_chunks(self) -> CompactVectors:
        return replace(self, chunks=None)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.chunks is None:
            return self._approximate(rows)
        codec = CompactCodec.of(self)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        for start in range(0, rows.size, _DECODE_BLOCK):
            block = rows[start : start + _DECODE_BLOCK]
            scales = None if self.full_scales is None else self.full_scales[block]
            out[start : start + block.size] = codec.decode(
                self.coarse_codes[block], self.coarse_lengths[block], self._full_codes(block), scales
            )
        return out

    def _full_codes(self, rows: np.ndarray) -> np.ndarray:
        chunk_of, offset = np.divmod(self.slots[rows], self.chunk_rows)
        out = np.empty((rows.size, self.dim), dtype=np.int8)
        chunks = self.chunks
        for i, (c, o) in enumerate(zip(chunk_of.tolist(), offset.tolist(), strict=True)):
            out[i] = chunks[c][o]
        return out

    def _first_stage_points(self, rows: np.ndarray) -> np.ndarray:
        """float32[len(rows), c]: the rows' first-stage points before renormalising (decoded code × length)."""
        return _first_stage_points(self.coarse_quantiser, self.coarse_codes[rows], self.coarse_lengths[rows])

    def _approximate(self, rows: np.ndarray) -> np.ndarray:
        """Full vectors rebuilt from the first stage (PCA inverse), unit norm: what answers before the chunks load."""
        return normalise(_reconstruct(self.coarse, self._first_stage_points(rows)))

    def total(self) -> np.ndarray:
        return self.full_total

    def arrays(self) -> dict[str, np.ndarray]:
        """Every file but the chunks, which :meth:`chunk_arrays` gives (they load in a later stage)."""
        out = {
            "coarse.codes.npy": self.coarse_codes,
            "coarse.lengths.npy": self.coarse_lengths,
            "coarse.step.npy": self.coarse_quantiser.step,
            "slots.npy": self.slots,
            "full.step.npy": self.full_quantiser.step,
            "full.total.npy": self.full_total,
        }
        if self.full_scales is not None:
            out["full.scales.npy"] = self.full_scales
        for name, array in self.coarse.arrays().items():
            out[f"coarse.{name}.npy"] = array
        return out

    def chunk_arrays(self) -> dict[str, np.ndarray]:
        if self.chunks is None:
            raise ValueError("the full-vector chunks are not loaded")
        return {chunk_file(i): chunk for i, chunk in enumerate(self.chunks)}

    def describe(self) -> dict[str, Any]:
        return {
            "layout": "compact",
            "coarse": self.coarse.describe(),
            "chunk_rows": self.chunk_rows,
            "chunks": self.n_chunks,
            "fitted_rows": self.fitted_rows,
            "full": _full_kind(self.residual, self.full_scales is not None),
        }

    @classmethod
    def from_parts(cls, description: Mapping[str, Any], array: Any, names: Sequence[str]) -> CompactVectors:
        """Rebuild from :meth:`describe` and a ``name -> array`` loader; the chunks only when all are present."""
        coarse = Projection.from_parts(
            description["coarse"], {name: array(f"coarse.{name}.npy") for name in ("mean", "components", "scale")}
        )
        table = cls(
            coarse=coarse,
            coarse_quantiser=Quantiser(array("coarse.step.npy")),
            coarse_codes=array("coarse.codes.npy"),
            coarse_lengths=array("coarse.lengths.npy"),
            slots=array("slots.npy"),
            full_quantiser=Quantiser(array("full.step.npy")),
            full_total=array("full.total.npy"),
            chunk_rows=int(description["chunk_rows"]),
            fitted_rows=int(description.get("fitted_rows", FULL_SAMPLE)),
            residual=_full_code(description) != "direct",
            full_scales=array("full.scales.npy") if _full_code(description) == "residual-scaled" else None,
        )
        wanted = [chunk_file(i) for i in range(int(description["chunks"]))]
        if wanted and all(name in names for name in wanted):
            table = table.with_chunks([array(name) for name in wanted])
        elif not wanted:
            table = table.with_chunks([])
        return table


def _full_code(description: Mapping[str, Any]) -> str:
    kind = description.get("full", "direct")
    if kind not in ("direct", "residual", "residual-scaled"):
        raise ValueError(f"unknown full-vector code {kind!r}: written by a newer release")
    return kind


def _full_kind(residual: bool, scaled: bool) -> str:
    if scaled and not residual:
        raise ValueError("per-row scales are only used with residual codes")
    return "residual-scaled" if scaled else "residual" if residual else "direct"


_SCALE_FLOOR = np.float32(np.finfo(np.float16).tiny)  # a zero residual still gets a finite, normal scale


def _row_scales(values: np.ndarray, step: np.ndarray) -> np.ndarray:
    """float16[n]: per-row scales so each row's largest ``value / step`` codes to at most ±127 exactly.

    Rounded *up* to float16 so no code clips; a row whose residual is small gets fine steps instead of the
    catalog-wide ones, and a row beyond the fitted range gets coarse ones instead of saturating.
    """
    peak = np.abs(values / step).max(axis=1) / np.float32(127.0) if values.shape[0] else np.zeros(0, np.float32)
    scales = np.maximum(peak, _SCALE_FLOOR).astype(np.float16)
    low = scales.astype(np.float32) < peak
    scales[low] = np.nextafter(scales[low], np.float16(np.inf))
    return scales


_DECODE_BLOCK = 4096


def _first_stage_points(quantiser: Quantiser, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return quantiser.decode(codes) * lengths[:, None].astype(np.float32)


def _reconstruct(coarse: Projection, points: np.ndarray) -> np.ndarray:
    """float32[n, d]: model-space vectors whose first-stage points (before renormalising) are ``points``."""
    return (points / coarse.scale) @ coarse.components.T + coarse.mean


def chunks_for(slot_count: int, chunk_rows: int) -> int:
    return -(-slot_count // chunk_rows)


@dataclass
class CompactCodec:
    """What a compaction keeps from the previous compact snapshot: the first-stage projection and both scales.

    ``fitted_rows`` is the size of the sample it was learned from: a codec learned from a young, small catalog is
    learned again once the catalog has doubled (up to :data:`FULL_SAMPLE` rows), then kept for good. ``residual``:
    the full quantiser codes the vector minus its first-stage reconstruction (every codec learned now; a codec read
    from an older snapshot codes the vector itself and keeps doing so). ``row_scaled``: each row's residual code
    also has its own scale (float16), so the row's largest value uses the whole int8 range; a codec read from a
    snapshot without scales keeps coding without them.
    """

    coarse: Projection
    coarse_quantiser: Quantiser
    full_quantiser: Quantiser
    fitted_rows: int
    residual: bool = True
    row_scaled: bool = True

    @classmethod
    def of(cls, table: CompactVectors) -> CompactCodec:
        return cls(
            table.coarse,
            table.coarse_quantiser,
            table.full_quantiser,
            table.fitted_rows,
            table.residual,
            table.full_scales is not None,
        )

    @classmethod
    def fit(cls, sample: np.ndarray, coarse_dim: int, *, seed: int = 0) -> CompactCodec:
        """Learn the first-stage PCA and both quantisers from a sample of unit vectors.

        A small sample may not have seen an axis's largest values: its steps get 50% headroom (values beyond
        saturate, and a small catalog learns its codec again when a new vector would), and the first stage has at
        most as many axes as rows. The residual's range is measured on the sample's own residuals and, below
        :data:`FULL_SAMPLE` rows (where a PCA fits its own rows noticeably better than new ones), also on the
        residuals of half the sample under a PCA learned from the other half; the larger is kept.
        """
        sample = normalise(sample)
        rows, _ = sample.shape
        headroom = 1.0 if rows >= FULL_SAMPLE else 1.5
        coarse = _fit_first_stage(sample, coarse_dim, seed)
        codec = cls(coarse, Quantiser.fit(coarse.apply(sample), headroom=headroom), Quantiser(np.ones(1)), rows)
        peak = np.abs(codec.residual_of(sample)).max(axis=0)
        if rows < FULL_SAMPLE and rows >= 4:
            fitted, held_out = sample[0::2], sample[1::2]
            half = _fit_first_stage(fitted, coarse_dim, seed)
            centred = held_out - half.mean
            peak = np.maximum(peak, np.abs(centred - (centred @ half.components) @ half.components.T).max(axis=0))
        elif rows < 4:  # too few rows to tell: the range of the vectors themselves about their mean
            peak = np.maximum(peak, np.abs(sample - coarse.mean).max(axis=0))
        codec.full_quantiser = Quantiser.fit(peak[None, :], headroom=headroom)
        return codec

    def outgrown(self, live_rows: int) -> bool:
        """True when a catalog of ``live_rows`` should learn its codec again (it has doubled since a small fit)."""
        return self.fitted_rows < FULL_SAMPLE and live_rows >= 2 * max(self.fitted_rows, 1)

    def encode_first_stage(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(int8 codes, float16 lengths) of unit vectors in the first stage."""
        centred = (np.asarray(vectors, dtype=np.float32) - self.coarse.mean) @ self.coarse.components
        centred *= self.coarse.scale
        lengths = np.linalg.norm(centred, axis=1)
        unit = centred / np.maximum(lengths, np.float32(1e-12))[:, None]
        return self.coarse_quantiser.encode(unit), lengths.astype(np.float16)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(first-stage codes, first-stage lengths, full-vector codes, full-vector row scales or None) of unit
        vectors."""
        vectors = np.asarray(vectors, dtype=np.float32)
        codes, lengths = self.encode_first_stage(vectors)
        values = self._full_input(vectors, codes, lengths)
        if not self.row_scaled:
            return codes, lengths, self.full_quantiser.encode(values), None
        scales = _row_scales(values, self.full_quantiser.step)
        return codes, lengths, self.full_quantiser.encode(values / scales.astype(np.float32)[:, None]), scales

    def decode(
        self,
        coarse_codes: np.ndarray,
        coarse_lengths: np.ndarray,
        full_codes: np.ndarray,
        full_scales: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32[n, d]: the vectors :meth:`encode` gave these codes (the float32 rows a search scores)."""
        decoded = self.full_quantiser.decode(full_codes)
        if full_scales is not None:
            decoded *= np.asarray(full_scales, dtype=np.float32)[:, None]
        if self.residual:
            decoded += _reconstruct(
                self.coarse, _first_stage_points(self.coarse_quantiser, coarse_codes, coarse_lengths)
            )
        return decoded

    def residual_of(self, vectors: np.ndarray) -> np.ndarray:
        """What the full quantiser codes for unit ``vectors`` (the residual, or the vectors themselves)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return self._full_input(vectors, *self.encode_first_stage(vectors))

    def saturates(self, vectors: np.ndarray) -> bool:
        """True when a vector's full code would clip, or with row scales need a scale above 1: a value beyond the
        fitted range, coded more coarsely than the catalog's own rows."""
        limit = self.full_quantiser.step * np.float32(127.5)
        return bool(np.any(np.abs(self.residual_of(vectors)) > limit))

    def _full_input(self, vectors: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if not self.residual:
            return vectors
        return vectors - _reconstruct(self.coarse, _first_stage_points(self.coarse_quantiser, codes, lengths))

    def total(
        self,
        coarse_codes: np.ndarray,
        coarse_lengths: np.ndarray,
        chunks: Sequence[np.ndarray],
        *,
        full_scales: np.ndarray | None = None,
        slots: np.ndarray | None = None,
    ) -> np.ndarray:
        """float64[d]: the sum of the decoded full vectors of the rows with these first-stage bytes and chunks
        (freed slots are zero, so they add nothing). With row scales, ``slots`` says where each row's code is."""
        total = np.zeros(self.coarse.input_dim, dtype=np.float64)
        if full_scales is None:
            for chunk in chunks:
                total += chunk.sum(axis=0, dtype=np.int64)
        else:
            slot_scales = np.zeros(sum(chunk.shape[0] for chunk in chunks), dtype=np.float32)
            slot_scales[np.asarray(slots, dtype=np.int64)] = full_scales
            start = 0
            for chunk in chunks:
                total += slot_scales[start : start + chunk.shape[0]] @ chunk.astype(np.float32)
                start += chunk.shape[0]
        total *= self.full_quantiser.step.astype(np.float64)
        if self.residual and coarse_codes.shape[0]:
            points = np.zeros(self.coarse.output_dim, dtype=np.float64)
            for start in range(0, coarse_codes.shape[0], _DECODE_BLOCK):
                block = slice(start, start + _DECODE_BLOCK)
                points += _first_stage_points(self.coarse_quantiser, coarse_codes[block], coarse_lengths[block]).sum(
                    axis=0, dtype=np.float64
                )
            total += (points / self.coarse.scale) @ self.coarse.components.T.astype(np.float64)
            total += coarse_codes.shape[0] * self.coarse.mean.astype(np.float64)
        return total


def _fit_first_stage(sample: np.ndarray, coarse_dim: int, seed: int) -> Projection:
    from catalens.index.reduce import fit_projection

    rows, d = sample.shape
    if rows < 2:  # one vector: a single axis along it
        return Projection("pca", np.zeros(d, np.float32), sample.T.copy(), np.ones(1, np.float32))
    return fit_projection(sample, max(1, min(coarse_dim, d, rows - 1)), seed=seed)
