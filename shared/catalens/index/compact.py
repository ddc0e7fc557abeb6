"""The builder's half of the compact layout (:mod:`catalens.index.vectors`): codes, slots and chunks of a new version.

A compaction keeps what the previous compact snapshot learned (the first-stage PCA and both quantisers) and every
unchanged item's slot, so chunks without a changed slot are the previous version's arrays themselves: the new
version shares them in memory and writes identical bytes. Freed slots (deleted items) are zeroed and reused by the
next new items, lowest first. Memory stays near the size of the result: int8 chunks, int8 first-stage codes, and
one float32 first-stage matrix (1 KB per item at 256 axes) for the graph builder; never a float32 full matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from catalens.index.reduce import normalise
from catalens.index.vectors import CHUNK_ROWS, COARSE_DIM, FULL_SAMPLE, CompactCodec, CompactVectors, chunks_for

if TYPE_CHECKING:
    from catalens.index.snapshot import Snapshot

_ENCODE_BLOCK = 4096


class _ItemState(Protocol):
    """What build.py resolved per live item: a record with a fresh vector, or a row of the previous snapshot."""

    row: int

    @property
    def record(self): ...


@dataclass(frozen=True)
class CompactRows:
    """Per live row (in the order given): first-stage codes and lengths, full-vector slots; plus the chunks."""

    codec: CompactCodec
    coarse_codes: np.ndarray  # int8[n, c]
    coarse_lengths: np.ndarray  # float16[n]
    full_scales: np.ndarray | None  # float16[n], or None for a codec without row scales
    slots: np.ndarray  # int32[n]
    chunks: tuple[np.ndarray, ...]
    total: np.ndarray  # float64[d]
    chunk_rows: int
    chunks_reused: int

    def first_stage(self) -> np.ndarray:
        """float32 unit rows of the first stage as the search will score them (decoded codes): the graph's input."""
        out = np.empty(self.coarse_codes.shape, dtype=np.float32)
        for start in range(0, out.shape[0], _ENCODE_BLOCK):
            block = self.codec.coarse_quantiser.decode(self.coarse_codes[start : start + _ENCODE_BLOCK])
            out[start : start + _ENCODE_BLOCK] = normalise(block)
        return out

    def reordered(self, order: np.ndarray) -> CompactRows:
        return CompactRows(
            codec=self.codec,
            coarse_codes=np.ascontiguousarray(self.coarse_codes[order]),
            coarse_lengths=self.coarse_lengths[order],
            full_scales=None if self.full_scales is None else self.full_scales[order],
            slots=self.slots[order],
            chunks=self.chunks,
            total=self.total,
            chunk_rows=self.chunk_rows,
            chunks_reused=self.chunks_reused,
        )

    def table(self) -> CompactVectors:
        return CompactVectors(
            coarse=self.codec.coarse,
            coarse_quantiser=self.codec.coarse_quantiser,
            coarse_codes=self.coarse_codes,
            coarse_lengths=self.coarse_lengths,
            slots=self.slots,
            full_quantiser=self.codec.full_quantiser,
            full_total=self.total,
            chunk_rows=self.chunk_rows,
            chunks=self.chunks,
            fitted_rows=self.codec.fitted_rows,
            residual=self.codec.residual,
            full_scales=self.full_scales,
        )


def compact_rows(
    live_ids: Sequence[str],
    states: Mapping[str, _ItemState],
    previous: Snapshot | None,
    *,
    coarse_dim: int = COARSE_DIM,
    chunk_rows: int = CHUNK_ROWS,
    seed: int = 0,
) -> CompactRows:
    """Codes, slots and chunks for ``live_ids`` (their order is the row order, before any graph reordering)."""
    n = len(live_ids)
    prev_table = previous.table if previous is not None and isinstance(previous.table, CompactVectors) else None
    if prev_table is not None and prev_table.chunks is None:
        raise ValueError("compacting into a compact snapshot needs its full-vector chunks loaded")
    chunk_rows = prev_table.chunk_rows if prev_table is not None else chunk_rows
    refit = prev_table is not None and n > 0 and _should_refit(CompactCodec.of(prev_table), live_ids, states, n)

    def source_vector(item_id: str) -> np.ndarray:
        """The item's unit vector from its record, or from a float32 previous snapshot's row."""
        state = states[item_id]
        if state.record is not None:
            return np.asarray(state.record.vector, dtype=np.float32)
        return previous.table.rows(np.array([state.row]))[0]

    if prev_table is not None and not refit:
        codec = CompactCodec.of(prev_table)
    else:
        if n == 0:
            raise ValueError("cannot learn a compact codec without any live vectors")
        picks = np.random.default_rng(seed).choice(n, min(n, FULL_SAMPLE), replace=False)
        sample = np.stack([source_vector(live_ids[i]) for i in np.sort(picks).tolist()])
        codec = CompactCodec.fit(sample, coarse_dim, seed=seed)

    # Slots: a row kept from a compact previous keeps its slot, and so does an updated item; new items fill freed
    # slots (lowest first), then append.
    slots = np.full(n, -1, dtype=np.int64)
    fresh: list[int] = []  # positions whose vectors are (re)encoded
    if prev_table is not None:
        fresh_positions = [i for i, item_id in enumerate(live_ids) if states[item_id].record is not None]
        prev_rows = previous.rows_of([live_ids[i] for i in fresh_positions])
        for position, row in zip(fresh_positions, prev_rows.tolist(), strict=True):
            if row >= 0:
                slots[position] = prev_table.slots[row]
        for i, item_id in enumerate(live_ids):
            state = states[item_id]
            if state.record is None:
                slots[i] = prev_table.slots[state.row]
        fresh = list(range(n)) if refit else fresh_positions
        capacity = sum(chunk.shape[0] for chunk in prev_table.chunks)
        used_before = np.zeros(capacity, dtype=bool)
        used_before[prev_table.slots] = True
    else:
        fresh = list(range(n))
        capacity = 0
        used_before = np.zeros(0, dtype=bool)
    taken = np.zeros(max(capacity, 1), dtype=bool)
    taken[slots[slots >= 0]] = True
    free = iter(np.flatnonzero(~taken[:capacity]).tolist())
    next_slot = capacity
    for i in np.flatnonzero(slots < 0).tolist():
        slot = next(free, None)
        if slot is None:
            slot, next_slot = next_slot, next_slot + 1
        slots[i] = slot
    slot_count = int(slots.max()) + 1 if n else 0

    # Codes of every fresh vector; first-stage codes of kept rows come from the previous snapshot as they are.
    c = codec.coarse.output_dim
    coarse_codes = np.empty((n, c), dtype=np.int8)
    coarse_lengths = np.empty(n, dtype=np.float16)
    full_scales = np.empty(n, dtype=np.float16) if codec.row_scaled else None
    if prev_table is not None and not refit:
        kept = np.array([i for i in range(n) if states[live_ids[i]].record is None], dtype=np.int64)
        if kept.size:
            kept_rows = np.array([states[live_ids[i]].row for i in kept.tolist()], dtype=np.int64)
            coarse_codes[kept] = prev_table.coarse_codes[kept_rows]
            coarse_lengths[kept] = prev_table.coarse_lengths[kept_rows]
            if full_scales is not None:
                full_scales[kept] = prev_table.full_scales[kept_rows]
    # Chunks first (a previous chunk as it is, or a patched copy), then every fresh vector's codes written straight
    # into its slot: never a second copy of the full vectors, even on a first build of a million items.
    fresh_array = np.asarray(fresh, dtype=np.int64)
    base = None if refit else prev_table  # a new codec rewrites every chunk
    chunks, reused = _chunks(base, slots[fresh_array], used_before, taken, slot_count, chunk_rows, codec)
    for start in range(0, fresh_array.size, _ENCODE_BLOCK):
        block = fresh_array[start : start + _ENCODE_BLOCK]
        vectors = normalise(np.stack([source_vector(live_ids[i]) for i in block.tolist()]))
        coarse_codes[block], coarse_lengths[block], full_codes, scales = codec.encode(vectors)
        if full_scales is not None:
            full_scales[block] = scales
        chunk_of, offset = np.divmod(slots[block], chunk_rows)
        for code_row, chunk_index, row_in_chunk in zip(full_codes, chunk_of.tolist(), offset.tolist(), strict=True):
            chunks[chunk_index][row_in_chunk] = code_row
    chunks = tuple(chunks)
    return CompactRows(
        codec=codec,
        coarse_codes=coarse_codes,
        coarse_lengths=coarse_lengths,
        full_scales=full_scales,
        slots=slots.astype(np.int32),
        chunks=chunks,
        total=codec.total(coarse_codes, coarse_lengths, chunks, full_scales=full_scales, slots=slots),
        chunk_rows=chunk_rows,
        chunks_reused=reused,
    )


def _should_refit(codec: CompactCodec, live_ids: Sequence[str], states: Mapping[str, _ItemState], n: int) -> bool:
    """Learn the codec again while the catalog is small (< FULL_SAMPLE rows at the last fit, so re-encoding every row
    is cheap) when it has doubled or a fresh vector's full code would clip: a small catalog never keeps saturated
    codes. A codec learned from FULL_SAMPLE rows is kept for good (rare outliers saturate)."""
    if codec.fitted_rows >= FULL_SAMPLE:
        return False
    if codec.outgrown(n):
        return True
    fresh = [states[item_id].record.vector for item_id in live_ids if states[item_id].record is not None]
    return any(
        codec.saturates(normalise(np.asarray(fresh[start : start + _ENCODE_BLOCK], dtype=np.float32)))
        for start in range(0, len(fresh), _ENCODE_BLOCK)
    )


def _chunks(
    prev_table: CompactVectors | None,
    written: np.ndarray,
    used_before: np.ndarray,
    taken: np.ndarray,
    slot_count: int,
    chunk_rows: int,
    codec: CompactCodec,
) -> tuple[list[np.ndarray], int]:
    """The new version's chunks: a previous chunk as it is when none of its slots changed, else a patched copy with
    freed slots zeroed (the caller writes the ``written`` slots into it)."""
    d = codec.coarse.input_dim
    prev_chunks = prev_table.chunks if prev_table is not None else ()
    dirty = set((np.asarray(written, dtype=np.int64) // chunk_rows).tolist())
    chunks: list[np.ndarray] = []
    reused = 0
    for index in range(chunks_for(slot_count, chunk_rows)):
        start = index * chunk_rows
        length = min(chunk_rows, slot_count - start)
        previous = prev_chunks[index] if index < len(prev_chunks) else None
        freed = np.flatnonzero(used_before[start : start + chunk_rows] & ~taken[start : start + chunk_rows])
        if previous is not None and previous.shape[0] == length and not freed.size and index not in dirty:
            chunks.append(previous)
            reused += 1
            continue
        chunk = np.zeros((length, d), dtype=np.int8)
        if previous is not None:
            keep = min(length, previous.shape[0])
            chunk[:keep] = previous[:keep]
        chunk[freed[freed < length]] = 0
        chunks.append(chunk)
    return chunks, reused
