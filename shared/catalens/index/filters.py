"""Filters on product fields, applied before the top ``k`` is cut.

A :class:`Filter` is a conjunction of conditions on top-level product fields: equality, set
membership, and numeric ranges. It is evaluated two ways that agree:

* on a snapshot, vectorised over :class:`Columns` (numeric columns as float64 with NaN for
  missing, string/bool columns as int32 codes into a vocabulary) built once at build time;
* on one record's ``fields`` dict (:meth:`Filter.matches`), for deltas and for fields that are
  not stored as columns (lists, mixed types, very many distinct values).

Semantics: a missing field fails every condition; for a list-valued field, ``equals`` means
"contains" and ``one_of`` means "shares an element"; ``range`` bounds are inclusive and only
numbers (not booleans) fall inside one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from catalens.errors import CatalensError

Scalar = str | int | float | bool


class FilterError(CatalensError):
    """A filter specification is malformed (unknown operator, wrong value type)."""

    code = "invalid_filter"


@dataclass(frozen=True)
class Condition:
    """One test on one field: ``op`` is "eq" (``values`` has one element), "in", or "range"."""

    field: str
    op: Literal["eq", "in", "range"]
    values: tuple[Scalar, ...] = ()
    low: float | None = None
    high: float | None = None

    def matches(self, fields: Mapping[str, Any]) -> bool:
        if self.field not in fields:
            return False
        value = fields[self.field]
        if self.op == "range":
            return _in_range(value, self.low, self.high)
        candidates = value if isinstance(value, list) else [value]
        return any(_same(candidate, wanted) for candidate in candidates for wanted in self.values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (JSON keeps them apart too)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _in_range(value: Any, low: float | None, high: float | None) -> bool:
    if not _is_number(value) or math.isnan(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


@dataclass(frozen=True)
class Filter:
    """A conjunction of :class:`Condition`; hashable, so masks can be cached per filter.

    >>> f = Filter.parse({"category": "dairy", "brand": ["arla", "oatly"], "price": {"gte": 1, "lte": 5}})
    >>> f.matches({"category": "dairy", "brand": "oatly", "price": 2.5})
    True
    """

    conditions: tuple[Condition, ...] = ()

    @classmethod
    def equals(cls, field: str, value: Scalar) -> Filter:
        return cls((Condition(field, "eq", (_scalar(field, value),)),))

    @classmethod
    def one_of(cls, field: str, values: Iterable[Scalar]) -> Filter:
        return cls((Condition(field, "in", tuple(_scalar(field, v) for v in values)),))

    @classmethod
    def between(cls, field: str, low: float | None = None, high: float | None = None) -> Filter:
        for bound in (low, high):
            if bound is not None and not _is_number(bound):
                raise FilterError(f"range bounds of field {field!r} must be numbers, got {bound!r}")
        return cls((Condition(field, "range", (), low, high),))

    def __and__(self, other: Filter) -> Filter:
        return Filter(self.conditions + other.conditions)

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> Filter | None:
        """Read the API's JSON form: ``{field: value | [values] | {"gte": x, "lte": y, "gt":..., "lt":...}}``.

        ``gt``/``lt`` are treated as inclusive bounds nudged by one ulp, so ranges stay closed intervals.
        """
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise FilterError(f"filters must be an object of field -> condition, got {type(spec).__name__}")
        result = cls()
        for name, condition in spec.items():
            if not isinstance(name, str) or not name:
                raise FilterError(f"filter field names must be non-empty strings, got {name!r}")
            if isinstance(condition, Mapping):
                result &= _parse_range(name, condition)
            elif isinstance(condition, list):
                if not condition:
                    raise FilterError(f"filter on {name!r} lists no values")
                result &= cls.one_of(name, condition)
            else:
                result &= cls.equals(name, condition)
        return result

    def matches(self, fields: Mapping[str, Any]) -> bool:
        return all(condition.matches(fields) for condition in self.conditions)

    def __bool__(self) -> bool:
        return bool(self.conditions)


def _scalar(field: str, value: Any) -> Scalar:
    if isinstance(value, str | bool) or _is_number(value):
        return value
    raise FilterError(f"filter values of field {field!r} must be strings, numbers or booleans, got {value!r}")


_RANGE_OPS = {"gte", "lte", "gt", "lt"}


def _parse_range(field: str, condition: Mapping[str, Any]) -> Filter:
    unknown = set(condition) - _RANGE_OPS
    if unknown or not condition:
        raise FilterError(f"range filter on {field!r} takes gte/lte/gt/lt, got {sorted(map(str, condition))}")
    for op, bound in condition.items():
        if not _is_number(bound) or math.isnan(bound):
            raise FilterError(f"{op} bound of field {field!r} must be a number, got {bound!r}")
    low = condition.get("gte")
    high = condition.get("lte")
    if "gt" in condition:
        strict = math.nextafter(float(condition["gt"]), math.inf)
        low = strict if low is None else max(low, strict)
    if "lt" in condition:
        strict = math.nextafter(float(condition["lt"]), -math.inf)
        high = strict if high is None else min(high, strict)
    return Filter.between(field, low, high)


# --------------------------------------------------------------------------------------------
# Columns: the vectorised form of the per-item fields of a snapshot.


@dataclass(frozen=True, eq=False)
class Columns:
    """Per-row filterable columns of a snapshot.

    ``numeric[name]`` is float64[n] (NaN where missing or not a number); ``codes[name]`` is
    int32[n] indexing ``vocab[name]`` (-1 where missing). Fields with neither form are absent
    and are filtered by decoding rows (slow path).
    """

    numeric: Mapping[str, np.ndarray]
    codes: Mapping[str, np.ndarray]
    vocab: Mapping[str, Sequence[str | bool]]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (the vocabularies); arrays go to :meth:`arrays`."""
        return {"numeric": sorted(self.numeric), "categorical": {k: list(v) for k, v in self.vocab.items()}}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"num:{k}": v for k, v in self.numeric.items()}
        out.update({f"cat:{k}": v for k, v in self.codes.items()})
        return out

    @classmethod
    def from_parts(cls, description: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Columns:
        numeric = {name: arrays[f"num:{name}"] for name in description.get("numeric", [])}
        vocab = {name: list(values) for name, values in description.get("categorical", {}).items()}
        codes = {name: arrays[f"cat:{name}"] for name in vocab}
        return cls(numeric, codes, vocab)

    def has(self, field: str) -> bool:
        return field in self.numeric or field in self.codes

    def mask(self, condition: Condition) -> np.ndarray | None:
        """bool[n] for one condition, or None when the field has no column (use the slow path)."""
        if condition.field in self.numeric:
            column = self.numeric[condition.field]
            if condition.op == "range":
                with np.errstate(invalid="ignore"):
                    mask = ~np.isnan(column)
                    if condition.low is not None:
                        mask &= column >= condition.low
                    if condition.high is not None:
                        mask &= column <= condition.high
                return mask
            wanted = [float(v) for v in condition.values if _is_number(v)]
            return np.isin(column, np.asarray(wanted, dtype=np.float64)) if wanted else np.zeros(column.size, bool)
        if condition.field in self.codes:
            codes = self.codes[condition.field]
            if condition.op == "range":
                return np.zeros(codes.size, dtype=bool)  # strings and booleans are never inside a numeric range
            vocab = self.vocab[condition.field]
            wanted_codes = [i for i, v in enumerate(vocab) if any(_same(v, w) for w in condition.values)]
            if not wanted_codes:
                return np.zeros(codes.size, dtype=bool)
            return np.isin(codes, np.asarray(wanted_codes, dtype=np.int32))
        return None


def build_columns(rows: Sequence[Mapping[str, Any]], *, max_vocab_fraction: float = 0.25) -> Columns:
    """Column-ise the scalar fields of ``rows``.

    A field becomes numeric when every present value is a number, categorical when every present
    value is a string (or every one a bool) and it has at most ``max(256, max_vocab_fraction*n)``
    distinct values; otherwise (lists, mixed types, near-unique strings such as titles) it is
    left to the slow path, which gives the same answers.
    """
    n = len(rows)
    kinds: dict[str, set[str]] = {}
    for fields in rows:
        for name, value in fields.items():
            kinds.setdefault(name, set()).add(_kind(value))
    numeric: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    vocab: dict[str, list[str | bool]] = {}
    vocab_limit = max(256, int(max_vocab_fraction * n))
    for name in sorted(kinds):
        present = kinds[name] - {"null"}
        if present == {"number"}:
            numeric[name] = np.array([_number_or_nan(f.get(name)) for f in rows], dtype=np.float64)
        elif present in ({"str"}, {"bool"}):
            values = sorted({f[name] for f in rows if f.get(name) is not None}, key=lambda v: (str(type(v)), v))
            if len(values) > vocab_limit:
                continue
            index = {(type(v), v): i for i, v in enumerate(values)}
            codes[name] = np.array(
                [index[(type(f[name]), f[name])] if f.get(name) is not None else -1 for f in rows], dtype=np.int32
            )
            vocab[name] = values
    return Columns(numeric, codes, vocab)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "str"
    return "other"


def _number_or_nan(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing and storage (sorted keys, no spaces, UTF-8 kept)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
