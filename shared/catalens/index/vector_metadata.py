"""How an item lives in an Amazon S3 Vectors index, AWS-free: its metadata document and its filters.

S3 Vectors keeps per vector up to 40 KB of metadata in at most 50 keys, of which at most 2 KB may be filterable;
a few keys, named when the index is created, are non-filterable. An item is stored as:

* ``_record`` (non-filterable, :data:`RECORD_KEY`): the whole state as compact JSON: fields, image key, source
  ETag, S3 sequencer, update time and model fingerprint. What ``get`` and hits return, and what ingest compares
  sequencers against.
* one filterable key per product field whose value is a string, number or boolean (or a list of them), named as
  the field (field names are lower-case, so they never collide with ``_record``). When they would pass 2 KB, the
  longest values stay out of the filterable part (a filter on such a field no longer finds that item; it still
  shows in its fields). Titles and URLs are what gets left out first; categories, brands and prices fit.

:func:`vector_filter` turns the index's :class:`~catalens.index.filters.Filter` into S3 Vectors' filter document
with the same meaning (a missing field fails, a list field matches when an element does, ranges hold numbers
only, ``True`` is not ``1``). One difference remains: a range on a *list* of numbers never matches in the in-Lambda
index, while S3 Vectors compares its elements (the filter language cannot say "not a list"); the API ranges only
``price``, which is a number.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalens.errors import CatalensError
from catalens.index.filters import Condition, Filter, FilterError, canonical_json
from catalens.index.records import IndexedItem, ItemRecord

RECORD_KEY = "_record"
NON_FILTERABLE_KEYS = (RECORD_KEY,)
MAX_FILTERABLE_BYTES = 2048
MAX_METADATA_BYTES = 40 * 1024
MAX_METADATA_KEYS = 50


class VectorRecordError(CatalensError):
    """An item cannot be stored in S3 Vectors as it is (its fields exceed the metadata limit), or a stored
    vector's metadata cannot be read back."""

    code = "vector_record_invalid"


@dataclass(frozen=True)
class StoredItem:
    """An item as read back from the vector index (``vector`` is the stored unit vector, or None when not asked)."""

    item_id: str
    fields: dict[str, Any]
    image_key: str
    source_etag: str
    sequencer: str
    updated_at: float
    model_fingerprint: str
    vector: np.ndarray | None = None

    def indexed(self) -> IndexedItem:
        assert self.vector is not None
        return IndexedItem(
            item_id=self.item_id,
            vector=self.vector,
            fields=self.fields,
            image_key=self.image_key,
            source_etag=self.source_etag,
            sequencer=self.sequencer,
            updated_at=self.updated_at,
        )


def _is_primitive(value: Any) -> bool:
    if isinstance(value, bool | str):
        return True
    return isinstance(value, int | float) and math.isfinite(value)


def _filterable(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_primitive(v) for v in value)
    return _is_primitive(value)


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def item_metadata(record: ItemRecord, *, model_fingerprint: str = "") -> dict[str, Any]:
    """The metadata document of a live item; raises :class:`VectorRecordError` when it cannot fit 40 KB."""
    if record.deleted:
        raise VectorRecordError(f"item {record.item_id!r}: a deletion is not stored as a vector")
    state = {
        "fields": record.fields,
        "image_key": record.image_key,
        "source_etag": record.source_etag,
        "sequencer": record.sequencer,
        "updated_at": record.updated_at,
        "model_fingerprint": model_fingerprint,
    }
    document = canonical_json(state)
    candidates = sorted(
        ((name, value) for name, value in record.fields.items() if _filterable(value)),
        key=lambda pair: (_size(pair[1]), pair[0]),
    )
    filterable: dict[str, Any] = {}
    used = 0
    for name, value in candidates[: MAX_METADATA_KEYS - 1]:
        cost = _size(name) + _size(value) + 2
        if used + cost > MAX_FILTERABLE_BYTES:
            break  # sorted by size: every later value is at least as long
        filterable[name] = value
        used += cost
    total = used + len(document.encode()) + _size(RECORD_KEY)
    if total > MAX_METADATA_BYTES:
        raise VectorRecordError(
            f"item {record.item_id!r}: its fields take {total} bytes; S3 Vectors keeps at most {MAX_METADATA_BYTES}"
        )
    return {**filterable, RECORD_KEY: document}


def stored_item(key: str, metadata: Any, data: Any = None) -> StoredItem:
    """Read back what :func:`item_metadata` wrote (``data`` is the ``{"float32": [...]}`` of get_vectors)."""
    try:
        state = json.loads(metadata[RECORD_KEY])
        vector = None
        if data is not None:
            vector = np.asarray(data["float32"], dtype=np.float32)
            vector.setflags(write=False)
        return StoredItem(
            item_id=key,
            fields=dict(state["fields"]),
            image_key=str(state["image_key"]),
            source_etag=str(state["source_etag"]),
            sequencer=str(state["sequencer"]),
            updated_at=float(state["updated_at"]),
            model_fingerprint=str(state.get("model_fingerprint", "")),
            vector=vector,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VectorRecordError(f"vector {key!r} has no readable {RECORD_KEY!r} metadata: {exc}") from exc


def _condition(condition: Condition) -> dict[str, Any]:
    name = condition.field
    if condition.op == "range":
        bounds: dict[str, float] = {}
        for op, bound in (("$gte", condition.low), ("$lte", condition.high)):
            if bound is None:
                continue
            if not math.isfinite(bound):
                raise FilterError(f"range bound of field {name!r} must be finite, got {bound!r}")
            bounds[op] = bound
        # an open range still asks for a number: no bound at all would also match strings
        return {name: bounds or {"$gte": -sys.float_info.max}}
    if not condition.values:
        raise FilterError(f"filter on {name!r} lists no values")
    for value in condition.values:
        if isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"filter values of field {name!r} must be finite, got {value!r}")
    if condition.op == "eq" or len(condition.values) == 1:
        return {name: {"$eq": condition.values[0]}}
    return {name: {"$in": list(condition.values)}}


def vector_filter(filters: Filter | None) -> dict[str, Any] | None:
    """The S3 Vectors filter document for ``filters`` (None: no filter). Same answers as :meth:`Filter.matches`
    on the fields :func:`item_metadata` makes filterable.

    >>> vector_filter(Filter.parse({"category": "dairy", "price": {"lte": 5}}))
    {'$and': [{'category': {'$eq': 'dairy'}}, {'price': {'$lte': 5}}]}
    """
    if not filters:
        return None
    parts = [_condition(condition) for condition in filters.conditions]
    return parts[0] if len(parts) == 1 else {"$and": parts}


@dataclass(frozen=True)
class VectorStats:
    """What the vector index cannot tell cheaply, kept beside it by ingest: how many live items, the float64 sum
    of their unit vectors (calibration centres on the mean), every field name seen (what a filter may name) and
    the model fingerprint of the newest write.

    S3 Vectors has no count and no aggregate, and a scan of 10M vectors reads 160 GB; a running sum costs one
    small conditional write per ingest event. ``version`` counts the writes, so a reader knows a newer state.
    """

    count: int = 0
    total: np.ndarray | None = None
    fields: frozenset[str] = frozenset()
    model_fingerprint: str = ""
    version: int = 0

    def changed(
        self,
        *,
        added: np.ndarray | None = None,
        removed: np.ndarray | None = None,
        fields: Any = (),
        model_fingerprint: str = "",
    ) -> VectorStats:
        """These stats after one item's vector ``removed`` was replaced by ``added`` (either may be None)."""
        total = None if self.total is None else self.total.copy()
        count = self.count
        for vector, sign in ((added, 1), (removed, -1)):
            if vector is None:
                continue
            row = np.asarray(vector, dtype=np.float64)
            total = row * sign if total is None else total + sign * row
            count += sign
        if count <= 0:
            count, total = 0, None  # nothing live: start the next sum afresh rather than from rounding residue
        return VectorStats(
            count=count,
            total=total,
            fields=self.fields | frozenset(fields),
            model_fingerprint=model_fingerprint or self.model_fingerprint,
            version=self.version + 1,
        )

    def mean(self) -> np.ndarray | None:
        """Mean live unit vector (float32, read-only), None when nothing is live."""
        if self.count <= 0 or self.total is None:
            return None
        mean = (self.total / self.count).astype(np.float32)
        mean.setflags(write=False)
        return mean

    def encode(self) -> bytes:
        body = {
            "count": self.count,
            "total": None if self.total is None else base64.b64encode(self.total.astype("<f8").tobytes()).decode(),
            "fields": sorted(self.fields),
            "model_fingerprint": self.model_fingerprint,
            "version": self.version,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> VectorStats:
        try:
            body = json.loads(data)
            total = body.get("total")
            return cls(
                count=int(body["count"]),
                total=None if total is None else np.frombuffer(base64.b64decode(total), dtype="<f8").astype(np.float64),
                fields=frozenset(map(str, body.get("fields", []))),
                model_fingerprint=str(body.get("model_fingerprint", "")),
                version=int(body.get("version", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VectorRecordError(f"the vector index's stats object cannot be read: {exc}") from exc
