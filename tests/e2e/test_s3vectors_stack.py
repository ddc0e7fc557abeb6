"""The local stack with ``--index-backend s3vectors``: the same HTTP API, answered from moto's S3 Vectors index.

Photos go in through the catalog bucket (S3 → SQS → ingest → PutVectors), searches come back through the API
(QueryVectors with the moto fix running in the stack's own emulator), a delete takes an item out, a page deeper
than S3 Vectors answers is a 400, and the vectors survive a restart (saved beside the state).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StackClient, photo_bytes, start_stack, stop_stack, wait_ready


def hit_ids(answer: dict) -> list[str]:
    return [hit["item_id"] for hit in answer["hits"]]


def is_indexed(stack: StackClient, item_id: str) -> bool:
    return stack.api("GET", f"/items/{item_id}").status == 200


@pytest.fixture(scope="module")
def vector_stack(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[StackClient]:
    data_dir = tmp_path_factory.mktemp("s3vectors") / "data"
    process, log_path = start_stack(data_dir, model_dir, "--index-backend", "s3vectors", "--no-catalog")
    try:
        yield StackClient(wait_ready(process, data_dir, log_path), process, data_dir, log_path)
    finally:
        stop_stack(process)


def test_photos_are_indexed_searched_filtered_and_deleted_through_s3_vectors(vector_stack: StackClient) -> None:
    stack = vector_stack
    tag = uuid.uuid4().hex[:6]
    rocket, coffee = photo_bytes(21, base="rocket.jpg"), photo_bytes(22, base="coffee.png")
    assert stack.upload(f"rocket-{tag}.jpg", rocket, category="space", price="20").status == 201
    assert stack.upload(f"coffee-{tag}.jpg", coffee, category="kitchen", price="4").status == 201
    stack.wait_for(lambda: is_indexed(stack, f"coffee-{tag}"), what="both photos to be searchable", timeout=120)
    stack.wait_for(lambda: is_indexed(stack, f"rocket-{tag}"), what="both photos to be searchable", timeout=120)

    listed = stack.aws("s3vectors").list_vectors(vectorBucketName=stack_vector_bucket(stack), indexName="items")
    assert {f"rocket-{tag}", f"coffee-{tag}"} <= {vector["key"] for vector in listed["vectors"]}

    # the count comes from the stats beside the index, re-read at most every 2 s (the in-Lambda index's freshness)
    stack.wait_for(lambda: stack.api("GET", "/health").json()["item_count"] == 2, what="the item count")
    answer = stack.search_photo(rocket, "k=2&explain=true").json()
    assert hit_ids(answer)[0] == f"rocket-{tag}"
    assert answer["item_count"] == 2
    filtered = stack.search_photo(rocket, "k=5&filter.category=kitchen").json()
    assert hit_ids(filtered) == [f"coffee-{tag}"]
    cheap = stack.search_photo(rocket, "k=5&price_max=10").json()
    assert hit_ids(cheap) == [f"coffee-{tag}"]
    similar = stack.api("GET", f"/items/coffee-{tag}/similar?k=5").json()
    assert f"coffee-{tag}" not in hit_ids(similar)

    deep = stack.search_photo(rocket, "k=10&offset=95")
    assert deep.status == 400
    assert deep.json()["code"] == "page_too_deep"

    assert stack.delete(f"rocket-{tag}.jpg").status == 200
    stack.wait_for(lambda: not is_indexed(stack, f"rocket-{tag}"), what="the deleted photo to disappear")
    assert f"rocket-{tag}" not in hit_ids(stack.search_photo(rocket, "k=5").json())


def stack_vector_bucket(stack: StackClient) -> str:
    buckets = stack.aws("s3vectors").list_vector_buckets()["vectorBuckets"]
    assert len(buckets) == 1
    return buckets[0]["vectorBucketName"]


def test_the_vectors_survive_a_restart(tmp_path: Path, model_dir: Path) -> None:
    data_dir = tmp_path / "data"
    photo = photo_bytes(23, base="rocket.jpg")
    process, log_path = start_stack(data_dir, model_dir, "--index-backend", "s3vectors", "--no-catalog")
    try:
        stack = StackClient(wait_ready(process, data_dir, log_path), process, data_dir, log_path)
        assert stack.upload("kept.jpg", photo, category="space").status == 201
        stack.wait_for(lambda: is_indexed(stack, "kept"), what="the photo to be searchable")
    finally:
        assert stop_stack(process) == 0
    assert (data_dir / "state" / "vectors.jsonl").is_file()
    process, log_path = start_stack(data_dir, model_dir, "--index-backend", "s3vectors", "--no-catalog")
    try:
        stack = StackClient(wait_ready(process, data_dir, log_path), process, data_dir, log_path)
        assert hit_ids(stack.search_photo(photo, "k=1").json()) == ["kept"]
        assert stack.api("GET", "/health").json()["item_count"] == 1
    finally:
        stop_stack(process)
