"""The index builder's handler as plain Python (its image needs Docker; its logic does not), on moto's S3.

In the integration tier because importing the handler creates the X-Ray SDK's UDP emitter socket. What a run
does is tested in tests/unit/test_builder_service.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from catalens.adapters.s3 import S3BlobStore
from catalens.index.store import IndexStore
from catalens.query_domain import MIN_REFERENCE
from catalens.service.builder import BuildRequestError
from tests.integration.conftest import log_to_captured_stdout
from tests.unit.test_builder_service import record, write_query_samples


def test_the_handler_on_s3_compacts_refreshes_and_reports(
    load_function: Any, s3_client: Any, s3_bucket: str, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEX_BUCKET", s3_bucket)
    builder = load_function("builder")  # its own S3 store, on moto's bucket
    store = IndexStore(S3BlobStore(s3_client, s3_bucket), "index/")
    assert builder.store.prefix == store.prefix
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    write_query_samples(store, MIN_REFERENCE + 3)

    outcome = builder.lambda_handler({"trigger": "schedule"}, lambda_context)

    assert outcome["noop"] is False
    assert outcome["query_domain"]["status"] == "refreshed"
    manifest, _ = store.read_manifest()
    assert manifest.query_domain is not None
    assert outcome["query_domain"]["entry"]["key"] == manifest.query_domain.key
    assert manifest.query_domain.count == MIN_REFERENCE + 3
    assert store.load_view().query_domain is not None


@pytest.mark.parametrize("payload", [[], "x", None, {"force": "maybe"}])
def test_the_handler_refuses_an_unreadable_payload_by_name(
    load_function: Any, s3_client: Any, s3_bucket: str, lambda_context: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], payload: Any,
) -> None:  # fmt: skip
    monkeypatch.setenv("INDEX_BUCKET", s3_bucket)
    builder = load_function("builder")
    log_to_captured_stdout(builder)
    store = IndexStore(S3BlobStore(s3_client, s3_bucket), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")

    with pytest.raises(BuildRequestError):
        builder.lambda_handler(payload, lambda_context)

    assert store.read_manifest()[0].current is None, "nothing was built"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(line.get("code") == "invalid_build_request" and line.get("level") == "ERROR" for line in lines)
    assert any("InvalidInvocations" in line for line in lines)
