"""Every implementation of a port offers the whole port, with signatures a caller of the port can use.

Services call only what their port declares and never probe for it, so a method an implementation renames or
drops would fail only at run time (a 500, or a field that silently stops being filterable). These checks make it
fail here: each name the port declares exists on the implementation, each method accepts every call the port allows.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import numpy as np
import pytest
from aws_lambda_powertools import Metrics

from catalens import ports
from catalens.adapters.dynamodb import DynamoCooccurrenceStore, DynamoProfileStore
from catalens.adapters.s3 import S3BlobStore
from catalens.adapters.s3_catalog import S3CatalogReader
from catalens.cooccurrence import CooccurrenceCounts
from catalens.index import IndexView, ItemRecord, build_snapshot
from catalens.index.store import IndexStore
from catalens.service.telemetry import NullMetrics, PowertoolsMetrics, RecordingMetrics
from catalens_tools.in_memory.blobs import MemoryBlobStore
from catalens_tools.in_memory.profiles import InMemoryProfileStore
from tests.unit.test_ingest_service import MemoryCatalog

PORTS = (
    ports.BlobStore,
    ports.CatalogReader,
    ports.IndexReader,
    ports.IndexWriter,
    ports.QuerySampleSink,
    ports.SeedSampleStore,
    ports.Embedder,
    ports.ProfileStore,
    ports.CooccurrenceSource,
    ports.MetricsSink,
)


def port_members(port: type) -> dict[str, Any]:
    """What a port declares: its methods and properties, plus its data attributes (annotations, value None)."""
    members: dict[str, Any] = {name: None for name in vars(port).get("__annotations__", {})}
    for name, value in vars(port).items():
        if name == "__len__" or not name.startswith("_"):
            members[name] = value
    return members


def _accepts(implementation: inspect.Signature, declared: inspect.Signature) -> list[str]:
    """Why ``implementation`` cannot take every call ``declared`` allows (both without ``self``); empty when it can."""
    problems = []
    params = implementation.parameters
    kinds = {p.kind for p in params.values()}
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for index, wanted in enumerate(declared.parameters.values()):
        if wanted.kind in (wanted.POSITIONAL_ONLY, wanted.POSITIONAL_OR_KEYWORD):
            if index < len(positional):
                have = positional[index]
                if wanted.kind == wanted.POSITIONAL_OR_KEYWORD and have.name != wanted.name:
                    problems.append(f"positional parameter {index} is {have.name!r}, the port says {wanted.name!r}")
            elif inspect.Parameter.VAR_POSITIONAL not in kinds:
                problems.append(f"takes no positional parameter {wanted.name!r}")
                continue
            else:
                continue
        elif wanted.kind == wanted.KEYWORD_ONLY:
            have = params.get(wanted.name)
            if have is None or have.kind not in (have.KEYWORD_ONLY, have.POSITIONAL_OR_KEYWORD):
                if inspect.Parameter.VAR_KEYWORD not in kinds:
                    problems.append(f"takes no keyword {wanted.name!r}")
                continue
        else:
            continue  # *args / **kwargs in a port: nothing to hold the implementation to
        if wanted.default is not wanted.empty and have.default is have.empty:
            problems.append(f"{have.name!r} has no default, the port gives it one")
    declared_names = set(declared.parameters)
    declared_positions = sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in declared.parameters.values()
    )
    for index, extra in enumerate(params.values()):
        if extra.kind in (extra.VAR_POSITIONAL, extra.VAR_KEYWORD) or extra.default is not extra.empty:
            continue
        filled_by_position = extra in positional and index < declared_positions  # a misnamed one is reported above
        if extra.name not in declared_names and not filled_by_position:
            problems.append(f"requires {extra.name!r}, which the port does not pass")
    return problems


def _declared_on(implementation: Any, name: str) -> bool:
    """True when ``name`` is an attribute of ``implementation`` or annotated on its class (set in ``__init__``)."""
    if hasattr(implementation, name):
        return True
    cls = implementation if isinstance(implementation, type) else type(implementation)
    return any(name in vars(base).get("__annotations__", {}) for base in cls.__mro__)


def port_violations(port: type, implementation: Any) -> list[str]:
    """Everything ``implementation`` lacks of ``port``; a class stands for its instances (adapters, whose clients
    the unit tier cannot create); empty when it implements it."""
    violations = []
    for name, declared in port_members(port).items():
        if not _declared_on(implementation, name):
            violations.append(f"{name}: missing")
            continue
        if declared is None or isinstance(declared, property):
            attribute = inspect.getattr_static(implementation, name, None)
            if inspect.isfunction(attribute):
                violations.append(f"{name}: a method, the port declares an attribute")
            continue
        if not inspect.isfunction(declared):
            continue
        attribute = getattr(implementation, name)
        if not callable(attribute):
            violations.append(f"{name}: not callable")
            continue
        wanted = inspect.signature(declared)
        wanted = wanted.replace(parameters=list(wanted.parameters.values())[1:])  # without self
        have = inspect.signature(attribute)
        if isinstance(implementation, type):
            have = have.replace(parameters=list(have.parameters.values())[1:])
        violations.extend(f"{name}: {problem}" for problem in _accepts(have, wanted))
    return violations


def assert_implements(port: type, implementation: Any) -> None:
    violations = port_violations(port, implementation)
    assert not violations, f"{implementation!r} does not implement {port.__name__}: {violations}"
    if not isinstance(implementation, type):
        assert isinstance(implementation, port)  # the runtime check agrees (names only)


# ------------------------------------------------------------------------------------------------ the checker itself


class Port(Protocol):
    size: int

    def read(self, key: str, *, limit: int = 10) -> bytes: ...


class Whole:
    size = 3

    def read(self, key: str, *, limit: int = 10, strict: bool = False) -> bytes:
        return b""


class Renamed:
    size = 3

    def fetch(self, key: str, *, limit: int = 10) -> bytes:
        return b""


class Incompatible:
    def size(self) -> int:
        return 3

    def read(self, name: str, limit: int, strict: bool) -> bytes:
        return b""


def test_the_check_finds_what_an_implementation_lacks() -> None:
    assert port_violations(Port, Whole()) == []
    assert port_violations(Port, Renamed()) == ["read: missing"]
    assert port_violations(Port, Incompatible()) == [
        "size: a method, the port declares an attribute",
        "read: positional parameter 0 is 'name', the port says 'key'",
        "read: 'limit' has no default, the port gives it one",
        "read: requires 'strict', which the port does not pass",
    ]


def test_every_port_is_declared_in_the_ports_module_with_a_reason() -> None:
    for port in PORTS:
        assert port.__module__ == "catalens.ports"
        assert port.__doc__, port.__name__
        assert port_members(port), port.__name__


# ------------------------------------------------------------------------------------------------ the implementations


def _snapshot_view() -> IndexView:
    vectors = np.eye(4, dtype=np.float32)
    records = [ItemRecord(f"i{n}", vectors[n], {"category": "c"}, f"i{n}.jpg", f"e{n}", f"{n + 1:X}") for n in range(3)]
    fresh = ItemRecord("fresh", vectors[3], {"colour": "red"}, "fresh.jpg", "e", "F")
    return IndexView(build_snapshot(records, model_fingerprint="fp"), [fresh])


@pytest.mark.parametrize("view", [IndexView(None), _snapshot_view()], ids=["empty index", "snapshot and a fresh delta"])
def test_index_view_implements_the_index_reader(view: IndexView) -> None:
    assert_implements(ports.IndexReader, view)
    assert_implements(ports.IndexReader, IndexView)


def test_index_view_answers_every_question_of_the_port_when_empty() -> None:
    empty = IndexView(None)
    assert (len(empty), empty.model_fingerprint, empty.index_space) == (0, None, "")
    assert (empty.query_domain, empty.catalog_mean, empty.field_names()) == (None, None, frozenset())
    assert (empty.get("x"), empty.vector_of("x"), empty.search(np.ones(4, np.float32), 3)) == (None, None, [])


def test_the_index_store_implements_the_index_writer_and_its_queries_the_sample_sink() -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    assert_implements(ports.IndexWriter, store)
    assert_implements(ports.QuerySampleSink, store.queries)
    assert_implements(ports.SeedSampleStore, store.queries)


def test_the_s3_vectors_index_implements_the_writer_and_its_views_the_reader() -> None:
    from catalens.adapters.s3vectors import S3VectorsIndex, S3VectorsView

    assert_implements(ports.IndexWriter, S3VectorsIndex)
    assert_implements(ports.IndexReader, S3VectorsView)


def test_blob_stores_implement_the_blob_store() -> None:
    assert_implements(ports.BlobStore, MemoryBlobStore())
    assert_implements(ports.BlobStore, S3BlobStore)


def test_catalog_readers_implement_the_catalog_reader() -> None:
    assert_implements(ports.CatalogReader, S3CatalogReader)
    assert_implements(ports.CatalogReader, MemoryCatalog())


def test_profile_stores_implement_the_profile_store() -> None:
    assert_implements(ports.ProfileStore, InMemoryProfileStore())
    assert_implements(ports.ProfileStore, DynamoProfileStore)


def test_cooccurrence_stores_implement_the_cooccurrence_source() -> None:
    assert_implements(ports.CooccurrenceSource, CooccurrenceCounts())
    assert_implements(ports.CooccurrenceSource, DynamoCooccurrenceStore)


def test_metrics_sinks_implement_the_metrics_sink() -> None:
    for sink in (NullMetrics(), RecordingMetrics(), PowertoolsMetrics(Metrics(namespace="catalens-test"))):
        assert_implements(ports.MetricsSink, sink)
