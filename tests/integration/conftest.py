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

AWS_REGION = "us-east-1"


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
