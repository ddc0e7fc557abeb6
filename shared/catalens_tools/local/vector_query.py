"""``QueryVectors`` for moto's S3 Vectors, as AWS documents it (moto 5.2 stores vectors but cannot query them).

:func:`install` adds the operation to moto's S3 Vectors backend, its response class and its URL map, so the
in-process mock and the local stack's server both answer it. The search is exact (AWS's is approximate):

* **distance**: the index's ``distanceMetric``; ``cosine`` is 1 − cosine similarity, ``euclidean`` the L2
  distance. Results come nearest first, ties by key (AWS leaves tie order open).
* **topK**: 1 to 100, else ``ValidationException``. A query vector of the wrong dimension, or with NaN or
  infinity, is a ``ValidationException``; a missing bucket or index a ``NotFoundException`` (moto's own).
* **filter**: the operators of S3 Vectors' metadata filtering (:func:`matches`). ``returnDistance`` and
  ``returnMetadata`` add those members; the key always comes back.

Filter semantics, from the S3 Vectors user guide: a bare value means ``$eq``; several fields (or several operators
on one field) in one object must all hold; ``$and``/``$or`` take a non-empty list of filters. ``$eq`` and ``$in``
against a list-valued field match when any element matches. Booleans never equal numbers (JSON keeps them apart).
Where the guide is silent we follow the MongoDB-style reading it is modelled on: ``$ne`` and ``$nin`` also match a
vector that lacks the field, and a range operator matches only numbers.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

MAX_TOP_K = 100
COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS})

_installed = False
_lock = threading.Lock()


class FilterSyntaxError(ValueError):
    """A filter document S3 Vectors would refuse (AWS answers ``ValidationException``)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_primitive(value: Any) -> bool:
    return isinstance(value, str | bool) or (_is_number(value) and math.isfinite(value))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _elements(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _compare(op: str, value: Any, bound: float) -> bool:
    if not _is_number(value):
        return False
    if op == "$gt":
        return value > bound
    if op == "$gte":
        return value >= bound
    if op == "$lt":
        return value < bound
    return value <= bound


def _operator(field: str, op: str, operand: Any, metadata: Mapping[str, Any]) -> bool:
    present = field in metadata
    value = metadata.get(field)
    if op == "$exists":
        if not isinstance(operand, bool):
            raise FilterSyntaxError(f"$exists on {field!r} takes true or false, got {operand!r}")
        return present == operand
    if op in ("$eq", "$ne"):
        if not _is_primitive(operand):
            raise FilterSyntaxError(f"{op} on {field!r} takes a string, number or boolean, got {operand!r}")
        equal = present and any(_same(element, operand) for element in _elements(value))
        return equal if op == "$eq" else not equal
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand or not all(_is_primitive(v) for v in operand):
            raise FilterSyntaxError(f"{op} on {field!r} takes a non-empty list of primitives, got {operand!r}")
        found = present and any(_same(element, v) for element in _elements(value) for v in operand)
        return found if op == "$in" else not found
    if op in COMPARISONS:
        if not _is_number(operand) or not math.isfinite(operand):
            raise FilterSyntaxError(f"{op} on {field!r} takes a number, got {operand!r}")
        return present and any(_compare(op, element, operand) for element in _elements(value))
    raise FilterSyntaxError(f"unknown filter operator {op!r} on {field!r}")


def matches(document: Any, metadata: Mapping[str, Any]) -> bool:
    """True when a vector with ``metadata`` passes the S3 Vectors filter ``document``.

    Raises :class:`FilterSyntaxError` for a document AWS would refuse, whatever the metadata (every branch is
    checked, not only the first that decides).
    """
    if not isinstance(document, Mapping) or not document:
        raise FilterSyntaxError(f"a filter is a non-empty object, got {document!r}")
    results = []
    for key, condition in document.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise FilterSyntaxError(f"{key} takes a non-empty list of filters, got {condition!r}")
            parts = [matches(part, metadata) for part in condition]
            results.append(all(parts) if key == "$and" else any(parts))
        elif key.startswith("$"):
            raise FilterSyntaxError(f"unknown logical operator {key!r}")
        elif isinstance(condition, Mapping):
            if not condition:
                raise FilterSyntaxError(f"the condition on {key!r} names no operator")
            results.append(all([_operator(key, op, operand, metadata) for op, operand in condition.items()]))
        else:
            results.append(_operator(key, "$eq", condition, metadata))
    return all(results)


def distances(metric: str, query: Sequence[float], vectors: Sequence[Sequence[float]]) -> list[float]:
    """Distance of each vector to ``query`` under ``metric`` (float64; zero vectors are never returned by AWS)."""
    import numpy as np

    q = np.asarray(query, dtype=np.float64)
    if not len(vectors):
        return []
    matrix = np.asarray(vectors, dtype=np.float64)
    if metric == "euclidean":
        return np.linalg.norm(matrix - q, axis=1).tolist()
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(q)
    cosine = (matrix @ q) / np.maximum(norms, 1e-30)
    return (1.0 - cosine).tolist()


def query_index(
    index: Any,
    *,
    top_k: Any,
    query_vector: Any,
    filter_document: Any = None,
    return_distance: bool = False,
    return_metadata: bool = False,
) -> list[dict[str, Any]]:
    """The nearest ``top_k`` vectors of a moto ``Index`` (``.dimension``, ``.distance_metric``, ``.vectors``)."""
    from moto.s3vectors.exceptions import ValidationError

    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise ValidationError(
            "1 validation error detected. Value at '/topK' failed to satisfy constraint: "
            f"Member must be between 1 and {MAX_TOP_K}, inclusive"
        )
    data = (query_vector or {}).get("float32") if isinstance(query_vector, Mapping) else None
    if not isinstance(data, list) or len(data) != index.dimension:
        length = len(data) if isinstance(data, list) else 0
        raise ValidationError(f"Query vector must have length {index.dimension}, but has length {length}")
    if not all(_is_number(v) and math.isfinite(v) for v in data):
        raise ValidationError("Query vector must contain only finite floating-point values")
    candidates = list(index.vectors.values())
    if filter_document is not None:
        try:
            candidates = [v for v in candidates if matches(filter_document, v.metadata or {})]
        except FilterSyntaxError as exc:
            raise ValidationError(f"Invalid query filter: {exc}") from None
    scored = distances(index.distance_metric, data, [v.data["float32"] for v in candidates])
    order = sorted(range(len(candidates)), key=lambda i: (scored[i], candidates[i].key))[:top_k]
    out = []
    for i in order:
        entry: dict[str, Any] = {"key": candidates[i].key}
        if return_distance:
            entry["distance"] = scored[i]
        if return_metadata:
            entry["metadata"] = candidates[i].metadata or {}
        out.append(entry)
    return out


def install() -> None:
    """Add ``QueryVectors`` to moto's S3 Vectors (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        from moto.core.responses import ActionResult
        from moto.s3vectors import urls
        from moto.s3vectors.models import S3VectorsBackend
        from moto.s3vectors.responses import S3VectorsResponse

        def backend_query_vectors(
            self: S3VectorsBackend,
            vector_bucket_name: str,
            index_name: str,
            index_arn: str,
            **query: Any,
        ) -> tuple[str, list[dict[str, Any]]]:
            index = self.get_index(vector_bucket_name, index_name=index_name, index_arn=index_arn)
            return index.distance_metric, query_index(index, **query)

        def response_query_vectors(self: S3VectorsResponse) -> ActionResult:
            vector_bucket_name = self._get_param("vectorBucketName")
            index_arn = self._get_param("indexArn")
            index_name = self._get_param("indexName")
            self._validate_index_params(index_arn, index_name, vector_bucket_name)
            metric, vectors = self.s3vectors_backend.query_vectors(
                vector_bucket_name=vector_bucket_name,
                index_name=index_name,
                index_arn=index_arn,
                top_k=self._get_param("topK"),
                query_vector=self._get_param("queryVector"),
                filter_document=self._get_param("filter"),
                return_distance=self._get_bool_param("returnDistance", False),
                return_metadata=self._get_bool_param("returnMetadata", False),
            )
            return ActionResult({"vectors": vectors, "distanceMetric": metric})

        S3VectorsBackend.query_vectors = backend_query_vectors  # type: ignore[attr-defined]
        S3VectorsResponse.query_vectors = response_query_vectors  # type: ignore[attr-defined]
        urls.url_paths["{0}/QueryVectors$"] = S3VectorsResponse.dispatch
        _installed = True
