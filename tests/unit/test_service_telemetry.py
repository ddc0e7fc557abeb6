"""PowertoolsMetrics: points reach CloudWatch EMF with exactly their own dimensions, in as few documents as can be."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools import Metrics

from catalens.service.telemetry import PowertoolsMetrics


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Powertools Metrics object with an empty flush (its state is shared by every instance in the process)."""
    for name in ("POWERTOOLS_METRICS_DISABLED", "POWERTOOLS_DEV"):
        monkeypatch.delenv(name, raising=False)
    metrics = Metrics(namespace="CatalensTest", service="search")
    metrics.clear_metrics()
    yield metrics
    metrics.clear_metrics()


def emf_documents(out: str) -> list[dict[str, Any]]:
    """Each EMF document printed, as {metric name: (values, {dimension: value})}."""
    documents = []
    for line in out.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        document = json.loads(line)
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        dimensions = {name: document[name] for names in directive["Dimensions"] for name in names}
        documents.append({m["Name"]: (document[m["Name"]], dimensions) for m in directive["Metrics"]})
    return documents


def test_a_group_joins_the_handler_flush_as_one_document(metrics: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sink = PowertoolsMetrics(metrics)
    sink.emit_group(
        {"Searches": (1, "Count"), "SearchHits": (12, "Count"), "SearchMs": (8.5, "Milliseconds")}, {"kind": "photo"}
    )
    assert capsys.readouterr().out == ""  # nothing printed yet: it waits for the flush
    metrics.flush_metrics()

    (document,) = emf_documents(capsys.readouterr().out)
    dimensions = {"service": "search", "kind": "photo"}
    assert document == {
        "Searches": ([1.0], dimensions),
        "SearchHits": ([12.0], dimensions),
        "SearchMs": ([8.5], dimensions),
    }


def test_points_with_other_dimensions_never_share_a_document(metrics: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sink = PowertoolsMetrics(metrics)
    sink.emit_group({"Searches": (1, "Count")}, {"kind": "item"})
    sink.emit("ServerErrors", 1, dimensions={"code": "internal_error"})  # the same request failed afterwards
    sink.emit("Searches", 1, dimensions={"kind": "item"})
    metrics.flush_metrics()

    documents = emf_documents(capsys.readouterr().out)
    assert {"ServerErrors": ([1.0], {"service": "search", "code": "internal_error"})} in documents
    assert {"Searches": ([1.0, 1.0], {"service": "search", "kind": "item"})} in documents
    assert len(documents) == 2


def test_a_batch_keeps_plain_and_split_points_apart(metrics: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Ingest's pattern: a failure by reason first, plain counts after it, another reason last."""
    sink = PowertoolsMetrics(metrics)
    sink.emit("IngestFailures", 1, dimensions={"reason": "not_an_image"})
    sink.emit("ItemsIndexed", 1)
    sink.emit("EmbedMs", 40.0, unit="Milliseconds")
    sink.emit("IngestFailures", 1, dimensions={"reason": "invalid_field"})
    metrics.flush_metrics()

    documents = emf_documents(capsys.readouterr().out)
    points = sorted((name, value, sorted(dims.items())) for doc in documents for name, (value, dims) in doc.items())
    assert points == [
        ("EmbedMs", [40.0], [("service", "search")]),
        ("IngestFailures", [1.0], [("reason", "invalid_field"), ("service", "search")]),
        ("IngestFailures", [1.0], [("reason", "not_an_image"), ("service", "search")]),
        ("ItemsIndexed", [1.0], [("service", "search")]),
    ]


def test_after_a_flush_the_next_invocation_starts_clean(metrics: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sink = PowertoolsMetrics(metrics)
    sink.emit("ClientErrors", 1, dimensions={"code": "invalid_parameter"})
    metrics.flush_metrics()
    sink.emit_group({"Searches": (1, "Count")}, {"kind": "photo"})
    metrics.flush_metrics()

    first, second = emf_documents(capsys.readouterr().out)
    assert first == {"ClientErrors": ([1.0], {"service": "search", "code": "invalid_parameter"})}
    assert second == {"Searches": ([1.0], {"service": "search", "kind": "photo"})}


def test_nothing_is_recorded_when_metrics_are_disabled(
    metrics: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The local stack turns EMF off; Powertools would still print dimensioned points and full metric sets."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    sink = PowertoolsMetrics(metrics)
    sink.emit_group({"Searches": (1, "Count")}, {"kind": "photo"})
    for _ in range(120):
        sink.emit("IngestFailures", 1, dimensions={"reason": "not_an_image"})
        sink.emit("ItemsIndexed", 1)
    assert capsys.readouterr().out == ""
    assert not metrics.metric_set
