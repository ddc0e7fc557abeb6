"""A BM25 index over items' words: build from documents, search with numpy, round-trip as plain arrays.

Each item's searchable text comes in fields (title, brand, description, the text read off its photo, …); a
field's tokens count ``FIELD_WEIGHTS[field]`` times (BM25F with one length normalisation: a title word weighs more
than a word deep in a description). Scores are precomputed per posting (an *impact*: ``idf · tf·(k1+1) /
(tf + k1·(1 − b + b·len/avglen))``), so a query is one gather and add per query term over that term's postings,
and a top-k over the touched rows; no Python loop over documents.

The arrays (vocabulary as one UTF-8 blob with offsets, CSR postings of int32 rows and float32 impacts, per-row
lengths) load with ``allow_pickle=False`` like the rest of an index; :meth:`LexicalIndex.to_arrays` and
:meth:`LexicalIndex.from_arrays` are the whole format.

Example
-------
>>> index = LexicalIndex.build([{"title": "Oat milk"}, {"title": "Whole milk", "description": "3.5% fat"}])
>>> rows, scores = index.search("oat milk", 2)
>>> rows.tolist()
[0, 1]
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalens.text.tokens import tokenize

# The fields a text query reads, and how much one of their tokens counts. ``read_text`` is what OCR read on the
# item's photo (:mod:`catalens.ocr`): useful, noisy, so no more than a description word.
FIELD_WEIGHTS: Mapping[str, float] = {
    "title": 3.0,
    "brand": 2.0,
    "category": 1.0,
    "tags": 1.0,
    "description": 1.0,
    "read_text": 1.0,
}
K1 = 1.2
B = 0.75
MAX_QUERY_TERMS = 32  # a query of more distinct terms is cut: bounded work per request (docs/design.md, inv. 7)
FORMAT = "catalens-text/1"


def item_terms(fields: Mapping[str, Any]) -> Counter[str]:
    """Weighted term frequencies of one item's searchable fields (what the index stores for it)."""
    counts: Counter[str] = Counter()
    for name, weight in FIELD_WEIGHTS.items():
        value = fields.get(name)
        if value is None or isinstance(value, bool):
            continue
        text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        for token, times in Counter(tokenize(text)).items():
            counts[token] += times * weight
    return counts


def query_terms(text: str) -> list[str]:
    """A query's distinct terms, in order of first appearance, at most ``MAX_QUERY_TERMS``."""
    return list(dict.fromkeys(tokenize(text)))[:MAX_QUERY_TERMS]


@dataclass(frozen=True)
class Bm25Stats:
    """Collection statistics a score depends on: shared by the index and the fresh items scored beside it."""

    documents: int
    average_length: float
    k1: float = K1
    b: float = B

    def idf(self, df: np.ndarray | float) -> np.ndarray | float:
        """Robertson–Spärck Jones idf, floored at 0 (a term in most items adds nothing rather than subtracting)."""
        n = self.documents
        return np.maximum(np.log1p((n - np.asarray(df) + 0.5) / (np.asarray(df) + 0.5)), 0.0)

    def impact(self, tf: np.ndarray, length: np.ndarray, idf: np.ndarray | float) -> np.ndarray:
        norm = self.k1 * (1.0 - self.b + self.b * length / max(self.average_length, 1e-9))
        return (idf * tf * (self.k1 + 1.0) / (tf + norm)).astype(np.float32)


class LexicalIndex:
    """Postings of every term over ``n`` rows; rows are whatever the caller numbers documents by.

    Parameters
    ----------
    terms
        The vocabulary, sorted.
    offsets
        int64[len(terms) + 1]: term ``t``'s postings are ``rows[offsets[t]:offsets[t+1]]``.
    rows, impacts
        int32 rows (ascending within a term) and their float32 BM25 impacts.
    lengths
        float32[n] weighted token count per row (0 for a row without text).
    """

    def __init__(
        self,
        terms: Sequence[str],
        offsets: np.ndarray,
        rows: np.ndarray,
        impacts: np.ndarray,
        lengths: np.ndarray,
        df: np.ndarray,
    ) -> None:
        self.terms = list(terms)
        self._term_ids = {term: index for index, term in enumerate(self.terms)}
        self.offsets = offsets
        self.rows = rows
        self.impacts = impacts
        self.lengths = lengths
        self.df = df
        with_text = lengths[lengths > 0]
        self.stats = Bm25Stats(len(lengths), float(with_text.mean()) if with_text.size else 0.0)

    def __len__(self) -> int:
        return int(self.lengths.size)

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, documents: Iterable[Mapping[str, Any]]) -> LexicalIndex:
        """Index each document's fields (``FIELD_WEIGHTS``); row ``i`` is the ``i``-th document."""
        return cls.from_term_counts(item_terms(doc) for doc in documents)

    @classmethod
    def from_term_counts(cls, counts: Iterable[Mapping[str, float]]) -> LexicalIndex:
        """Index precomputed weighted term frequencies (one mapping per row)."""
        vocabulary: dict[str, int] = {}
        term_ids: list[int] = []
        row_ids: list[int] = []
        tfs: list[float] = []
        lengths: list[float] = []
        for row, terms in enumerate(counts):
            lengths.append(float(sum(terms.values())))
            term_ids.extend([vocabulary.setdefault(term, len(vocabulary)) for term in terms])
            row_ids.extend([row] * len(terms))
            tfs.extend(terms.values())
        sorted_terms = sorted(vocabulary)
        rank = np.empty(len(vocabulary), dtype=np.int64)
        rank[[vocabulary[t] for t in sorted_terms]] = np.arange(len(sorted_terms))
        term = rank[np.asarray(term_ids, dtype=np.int64)] if term_ids else np.empty(0, np.int64)
        rows = np.asarray(row_ids, dtype=np.int32)
        tf = np.asarray(tfs, dtype=np.float32)
        order = np.lexsort((rows, term))
        term, rows, tf = term[order], rows[order], tf[order]
        df = np.bincount(term, minlength=len(sorted_terms)).astype(np.int32)
        offsets = np.zeros(len(sorted_terms) + 1, dtype=np.int64)
        np.cumsum(df, out=offsets[1:])
        length = np.asarray(lengths, dtype=np.float32)
        with_text = length[length > 0]
        stats = Bm25Stats(len(length), float(with_text.mean()) if with_text.size else 0.0)
        impacts = stats.impact(tf, length[rows], stats.idf(df)[term]) if rows.size else np.empty(0, np.float32)
        return cls(sorted_terms, offsets, rows, impacts, length, df)

    # ------------------------------------------------------------------------------------------------ searching
    def search(
        self, text: str, k: int, *, allowed: np.ndarray | None = None, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-scoring rows for ``text`` (rows with no query term left out), best first.

        ``allowed`` is a bool[n] mask (filters, rows hidden by fresher states); ``exclude`` rows never come back.
        Ties break by row, so one query always gives one order.
        """
        return self.search_terms(query_terms(text), k, allowed=allowed, exclude=exclude)

    def search_terms(
        self, terms: Sequence[str], k: int, *, allowed: np.ndarray | None = None, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = self.score_all(terms)
        if scores is None or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if allowed is not None:
            scores[~allowed] = 0.0
        if exclude is not None and exclude.size:
            scores[exclude] = 0.0
        touched = np.flatnonzero(scores > 0)
        if touched.size > k:
            part = np.argpartition(-scores[touched], k - 1)[:k]
            touched = touched[part]
        order = np.lexsort((touched, -scores[touched]))
        chosen = touched[order]
        return chosen.astype(np.int64), scores[chosen]

    def score_all(self, terms: Sequence[str]) -> np.ndarray | None:
        """float32[n] BM25 scores of every row for ``terms`` (None when no term is in the vocabulary)."""
        spans = [(self.offsets[t], self.offsets[t + 1]) for t in map(self._term_ids.get, terms) if t is not None]
        if not spans:
            return None
        scores = np.zeros(len(self), dtype=np.float32)
        for start, end in spans:
            scores[self.rows[start:end]] += self.impacts[start:end]  # rows are unique within a term
        return scores

    def score_rows(self, terms: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """BM25 scores of the given rows only (fusion re-scores a photo query's candidates)."""
        out = np.zeros(rows.size, dtype=np.float32)
        for t in map(self._term_ids.get, terms):
            if t is None:
                continue
            start, end = int(self.offsets[t]), int(self.offsets[t + 1])
            posting_rows = self.rows[start:end]
            where = np.searchsorted(posting_rows, rows)
            where = np.minimum(where, max(posting_rows.size - 1, 0))
            found = posting_rows[where] == rows if posting_rows.size else np.zeros(rows.size, bool)
            out[found] += self.impacts[start:end][where[found]]
        return out

    def score_counts(self, terms: Sequence[str], counts: Mapping[str, float]) -> float:
        """The score a document with these term counts would get in this collection (fresh items beside it)."""
        length = float(sum(counts.values()))
        grown = Bm25Stats(self.stats.documents + 1, self.stats.average_length, self.stats.k1, self.stats.b)
        total = 0.0
        for term in terms:
            tf = counts.get(term)
            if not tf:
                continue
            t = self._term_ids.get(term)
            df = int(self.df[t]) if t is not None else 0
            idf = grown.idf(df + 1)  # the collection with the fresh item in it
            total += float(grown.impact(np.float32(tf), np.float32(length), idf))
        return total

    # ------------------------------------------------------------------------------------------------ storage
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The index as named numpy arrays (no objects: ``np.load(..., allow_pickle=False)`` reads them)."""
        encoded = [term.encode() for term in self.terms]
        term_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=term_offsets[1:])
        return {
            "terms_blob": np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
            "terms_offsets": term_offsets,
            "offsets": self.offsets,
            "rows": self.rows,
            "impacts": self.impacts,
            "lengths": self.lengths,
            "df": self.df,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LexicalIndex:
        blob = arrays["terms_blob"].tobytes()
        bounds = arrays["terms_offsets"].tolist()
        terms = [blob[a:b].decode() for a, b in itertools.pairwise(bounds)]
        return cls(terms, arrays["offsets"], arrays["rows"], arrays["impacts"], arrays["lengths"], arrays["df"])


def rescale(scores: np.ndarray) -> np.ndarray:
    """BM25 scores as fractions of the best one (1.0 first): the scale personal re-ranking's boost is bounded on."""
    top = float(scores.max()) if scores.size else 0.0
    return (scores / top).astype(np.float32) if top > 0 and math.isfinite(top) else scores
