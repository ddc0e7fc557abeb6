"""The serving model itself (three networks + colour histogram, as `make setup` builds it) in the local stack.

The other e2e tests share a stack that runs the small Lite0 test model; this one builds the default model the way
the model layer does (fp32, ~15 s, torch-free) and checks that it serves: the demo catalog is embedded with it,
shoppers' photos of demo products find their product, and a shop's own photo is recognised as a copy of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from catalens.embedder import DEFAULT_MODEL_NAME
from catalens_tools.local.demo import PRODUCTS
from tests.e2e.conftest import (
    DEMO_ITEMS,
    STARTUP_TIMEOUT,
    StackClient,
    shopper_photo,
    start_stack,
    stop_stack,
    wait_ready,
)


@pytest.fixture(scope="module")
def serving_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackClient]:
    from catalens_tools.model.build import SERVING_POOLING, SERVING_WEIGHTS, build_models

    model_dir = tmp_path_factory.mktemp("serving-model")
    build_models(model_dir, weights=SERVING_WEIGHTS, pooling=SERVING_POOLING, variants=("fp32",))
    data_dir = tmp_path_factory.mktemp("serving-stack") / "data"
    process, log_path = start_stack(data_dir, Path(model_dir))
    try:
        client = StackClient(wait_ready(process, data_dir, log_path), process, data_dir, log_path)
        client.wait_for(
            lambda: client.status().get("item_count") == DEMO_ITEMS, timeout=STARTUP_TIMEOUT, what="the demo catalog"
        )
        yield client
    finally:
        stop_stack(process)


def test_the_stack_serves_the_default_model(serving_stack: StackClient) -> None:
    health = serving_stack.api("GET", "/health").json()
    assert health["model"]["name"] == DEFAULT_MODEL_NAME
    assert health["item_count"] == DEMO_ITEMS


def test_shoppers_photos_find_their_product(serving_stack: StackClient) -> None:
    found = []
    for seed in range(2200, 2200 + len(PRODUCTS)):  # one shopper's photo of each demo product
        product = PRODUCTS[seed % len(PRODUCTS)]  # the product shopper_photo(seed) photographs
        answer = serving_stack.search_photo(shopper_photo(seed), "k=5").json()
        assert "catalog_copy" not in answer["query"]
        found += [product.slug] if any(hit["item_id"].startswith(f"{product.slug}-") for hit in answer["hits"]) else []
    assert len(found) >= len(PRODUCTS) - 1, found  # rotated, relit, blurred, re-encoded: at most one product missed


def test_a_shop_photo_is_a_copy_and_finds_itself_before_its_other_editions(serving_stack: StackClient) -> None:
    listing = serving_stack.request("GET", "/local/catalog").json()["items"]
    keys = {entry["item_id"]: entry["key"] for entry in listing}
    s3 = serving_stack.aws("s3")
    for item_id in ("espresso-cup-warm", "espresso-cup-cool", "turf-roll-mirrored", "brick-tile-close-up"):
        photo = s3.get_object(Bucket=serving_stack.info["catalog_bucket"], Key=keys[item_id])["Body"].read()
        answer = serving_stack.search_photo(photo, "k=5").json()
        assert answer["hits"][0]["item_id"] == item_id
        assert answer["query"]["catalog_copy"] == item_id
        assert answer["calibrated"] is False
