"""Fixtures for the integration tier: AWS services emulated in-process by moto.

Generic on purpose: other suites append their own fixtures (tables, queues) below these.
No test here ever talks to real AWS: credentials are fake and every client is created inside ``mock_aws``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from catalens_tools.local import moto_fixes

AWS_REGION = "us-east-1"

# moto checks conditions and then writes without a lock, and rolls failed DynamoDB transactions back over other
# threads' writes; threads sharing moto in-process (the concurrency tests, the pollers) need the atomicity S3 and
# DynamoDB really have. The local stack applies the same fixes to its server (see catalens_tools.local.moto_fixes).
moto_fixes.make_s3_requests_atomic()
moto_fixes.make_dynamodb_operations_atomic()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region; account-id endpoints off (moto in-process with a current boto3)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def moto_aws(aws_env: None) -> Iterator[None]:
    """Every AWS call inside the test goes to moto's in-process backends (fresh per test)."""
    with mock_aws():
        yield


@pytest.fixture
def s3_client(moto_aws: None) -> Any:
    return boto3.client("s3", region_name=AWS_REGION)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """An empty bucket, private like the real ones."""
    name = "catalens-test-bucket"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(s3_client: Any, s3_bucket: str) -> Any:
    """An IndexStore on moto S3. GC grace is measured from S3's LastModified (whole seconds); a wall clock 10 s
    ahead makes everything written so far "old" without sleeping."""
    import time

    from catalens.adapters.s3 import S3BlobStore
    from catalens.index.manifest import RetryPolicy
    from catalens.index.store import IndexStore

    return IndexStore(
        S3BlobStore(s3_client, s3_bucket),
        "index/",
        retry=RetryPolicy(base_delay=0.0),
        wall_clock=lambda: time.time() + 10,
    )


# ------------------------------------------------------------------------------------------------ Lambda handlers


@pytest.fixture
def lambda_context() -> Any:
    """A fake LambdaContext with the attributes Powertools reads (name, ARN, request id, remaining time)."""
    from catalens_tools.local.runtime import LambdaContext

    return LambdaContext("catalens-test-function", memory_limit_in_mb=2048, timeout_seconds=30)


@pytest.fixture
def load_function(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import ``functions/<name>/app.py`` fresh (its init code runs now, under the test's moto and env).

    Returns the module, so a test can call ``module.lambda_handler`` and reach ``module.service``.
    """
    import importlib.util
    import sys
    import uuid
    from pathlib import Path

    def load(name: str) -> Any:
        monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "CatalensTest")
        monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", name)
        path = Path(__file__).resolve().parents[2] / "functions" / name / "app.py"
        module_name = f"catalens_test_{name}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, module_name, module)  # removed again when the test ends
        spec.loader.exec_module(module)
        return module

    return load


# ------------------------------------------------------------------------------------------------ from template.yaml


@pytest.fixture
def template_stack(moto_aws: None) -> Any:
    """The template's buckets, queues and tables, created from template.yaml itself (``catalens_tools.provision``).

    Names, key schemas, streams, TTL, redrive policies and bucket notifications are the template's own, so a
    test using this fixture cannot drift from what ``sam deploy`` creates.
    """
    from catalens_tools.provision import load_template, provision

    return provision(boto3.Session(region_name=AWS_REGION), load_template(), stack_name="catalens-test")


@pytest.fixture
def function_env(template_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``function_env("IngestFunction")`` sets the environment the template gives that function and returns it."""
    from catalens_tools.provision import function_specs

    specs = function_specs(template_stack)

    def apply(logical_id: str, **overrides: str) -> dict[str, str]:
        # the template serves the int8 model; the tests' model fixture builds fp32 only (tests/conftest.py)
        env = {**specs[logical_id].environment, "CATALENS_MODEL_VARIANT": "fp32", **overrides}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return apply


def log_to_captured_stdout(module: Any) -> None:
    """Point a loaded handler's Powertools logger at this test's captured stdout.

    The logger is process-wide (one per service name) and keeps the stream of the first test that created it.
    """
    import sys

    module.logger.registered_handler.stream = sys.stdout
