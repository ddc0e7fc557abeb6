"""A 1.7 GB version through moto's S3 server (the local stack's emulator, over HTTP): written in 64 MiB parts and
loaded back whole and verified. One object of that size never finishes uploading to moto; parts do."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest

from catalens.adapters.s3 import S3BlobStore
from catalens.index.manifest import VersionEntry
from catalens.index.store import IndexStore
from catalens.index.transport import PART_SIZE, write_files
from catalens_tools.local.server import LocalMotoServer

SIZE = 1_700_000_000
BUCKET = "catalens-parts"


@pytest.fixture
def server_store(aws_env: None) -> Iterator[IndexStore]:
    server = LocalMotoServer(port=0)
    server.start()
    try:
        client: Any = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield IndexStore(S3BlobStore(client, BUCKET), "index/")
    finally:
        server.stop()


@pytest.mark.slow
def test_a_version_of_1_7_gb_travels_through_the_moto_server_in_parts(server_store: IndexStore) -> None:
    store = server_store
    big = np.zeros(SIZE, dtype=np.uint8)
    big[:: 2**20] = np.arange(len(big[:: 2**20])) % 251 + 1  # every part different
    files = {"snapshot/full.0.npy": memoryview(big), "snapshot/snapshot.json": b"{}"}
    metas, stats = write_files(store.blob, files, lambda name: store.version_key("v1", name))
    assert stats.bytes_uploaded == SIZE + 2
    assert len(metas["snapshot/full.0.npy"]["parts"]) == -(-SIZE // PART_SIZE)
    assert max(info.size for info in store.blob.list("index/")) == PART_SIZE
    expected = hashlib.sha256(big).hexdigest()
    del big, files

    entry = VersionEntry("v1", 1, "", 0, "m", "1", metas, 0, "")
    loaded = store.fetch_version_files(entry)
    assert hashlib.sha256(loaded["full.0.npy"]).hexdigest() == expected
    assert bytes(loaded["snapshot.json"]) == b"{}"
