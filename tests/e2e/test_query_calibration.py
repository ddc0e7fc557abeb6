"""The query-domain loop on the local stack: shoppers' photo searches leave embedding samples in the index bucket, the
scheduled builder turns them into the query domain the manifest names, and photo searches come back calibrated.

Nothing is faked: the searches go through the gateway and the real search handler (which samples a share of them,
``QUERY_SAMPLE_RATE`` as the template sets it), the builder runs from the stack's scheduler, and the samples and
the manifest are read back from the emulator's S3 like a developer with the AWS CLI would.
"""

from __future__ import annotations

import json
from typing import Any

from catalens.query_domain import MIN_REFERENCE
from tests.e2e.conftest import StackClient, shopper_photo

MAX_SEARCHES = 800  # the default rate samples a quarter of them: ~200 expected, MIN_REFERENCE (30) needed


def sample_keys(stack: StackClient) -> list[str]:
    s3 = stack.aws("s3")
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=stack.info["index_bucket"], Prefix="index/queries/samples/"
    ):
        keys += [entry["Key"] for entry in page.get("Contents", [])]
    return keys


def manifest(stack: StackClient) -> dict[str, Any]:
    """The index manifest ({} until the first compaction writes one)."""
    s3 = stack.aws("s3")
    try:
        body = s3.get_object(Bucket=stack.info["index_bucket"], Key="index/manifest.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return {}
    return json.loads(body)


def test_photo_searches_build_the_query_domain_and_later_searches_are_calibrated(stack: StackClient) -> None:
    photos = [shopper_photo(1000 + n) for n in range(8)]  # shoppers' photos of demo products, not copies
    searches = 0
    while len(sample_keys(stack)) < MIN_REFERENCE:
        assert searches < MAX_SEARCHES, f"{searches} photo searches left only {len(sample_keys(stack))} samples"
        for photo in photos:  # a burst, then count (sampling is random and written in the background)
            answer = stack.search_photo(photo, "k=5")
            assert answer.status == 200, answer.body
            assert "catalog_copy" not in answer.json()["query"]  # a copy of a shop photo would not be sampled
        searches += len(photos)
    keys = sample_keys(stack)
    assert all(key.endswith(".npy") for key in keys)
    assert len(keys) < searches  # a share, not every search

    started = stack.request("POST", "/local/compact")
    assert started.status == 202, started.body
    entry = stack.wait_for(lambda: manifest(stack).get("query_domain"), timeout=120, what="the builder's refresh")
    assert entry["count"] >= MIN_REFERENCE

    def calibrated_answer() -> Any:
        answer = stack.search_photo(photos[0], "k=5&explain=true").json()
        return answer if answer.get("calibrated") else None

    answer = stack.wait_for(calibrated_answer, timeout=60, what="a calibrated photo search")
    for hit in answer["hits"]:
        parts = hit["explain"]
        assert abs(hit["score"] - (parts["centred"] - parts["hubness"])) < 1e-4
        assert -1.0 <= parts["raw"] <= 1.0
    # calibration re-orders the plain first stage (the 50 nearest by cosine); it never invents candidates
    plain = stack.search_photo(photos[0], "k=50&explain=true&calibrate=false").json()
    assert plain["calibrated"] is False
    assert all("hubness" not in hit["explain"] for hit in plain["hits"])
    plain_scores = {hit["item_id"]: hit["score"] for hit in plain["hits"]}
    for hit in answer["hits"]:
        assert abs(plain_scores[hit["item_id"]] - hit["explain"]["raw"]) < 1e-4

    # a copy of a catalog photo (a screenshot of the shop page) is in the catalog's domain: it is searched plain
    # cosine and finds its own item first, ahead of the item's other editions (mirrored, warm, ...)
    listing = stack.request("GET", "/local/catalog").json()["items"]
    classics = [entry for entry in listing if entry["item_id"].endswith("-classic")]
    assert len(classics) >= 5
    for entry in classics:
        photo = stack.aws("s3").get_object(Bucket=stack.info["catalog_bucket"], Key=entry["key"])["Body"].read()
        exact = stack.search_photo(photo, "k=3").json()
        assert exact["hits"][0]["item_id"] == entry["item_id"], exact["hits"]
        assert exact["calibrated"] is False
        assert exact["query"]["catalog_copy"] == entry["item_id"]
