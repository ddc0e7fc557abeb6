"""Query-domain calibration (catalens.query_domain): centring by domain, hubness correction, building a reference."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.query_domain import MIN_REFERENCE, QueryDomain, catalog_mean

DIM = 64


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ShopWorld:
    """Products, shop photos of them (a shared "studio" look) and shoppers' photos (a shared "shelf" look).

    Item 0 is a hub: its shop photo carries the shelf look too, so raw cosine puts it near every shopper photo.
    """

    def __init__(self, seed: int = 1, products: int = 40) -> None:
        self.rng = np.random.default_rng(seed)
        self.shelf = unit(self.rng.normal(size=DIM))
        studio = unit(self.rng.normal(size=DIM))
        self.products = unit(self.rng.normal(size=(products, DIM)))
        self.catalog = unit(self.products + studio)
        self.catalog[0] = unit(self.products[0] + studio + 1.5 * self.shelf)

    def photo(self, product: int) -> np.ndarray:
        return unit(self.products[product] + 1.5 * self.shelf + 0.3 * self.rng.normal(size=DIM)).astype(np.float32)

    def reference(self, n: int = 200) -> list[np.ndarray]:
        return [self.photo(i % len(self.products)) for i in range(n)]


def test_a_hub_item_is_demoted_and_the_right_items_win() -> None:
    world = ShopWorld()
    domain = QueryDomain.from_samples(world.reference())
    assert domain is not None
    mean = catalog_mean(world.catalog)
    raw_right = raw_hub = calibrated_right = calibrated_hub = 0
    for product in range(1, len(world.products)):
        query = world.photo(product)
        raw = world.catalog @ query
        calibrated, centred, hubness = domain.calibrate(query, world.catalog, mean)
        np.testing.assert_allclose(calibrated, centred - hubness, atol=1e-6)
        raw_right += int(raw.argmax() == product)
        raw_hub += int(raw.argmax() == 0)
        calibrated_right += int(calibrated.argmax() == product)
        calibrated_hub += int(calibrated.argmax() == 0)
    queries = len(world.products) - 1
    assert raw_hub > queries // 2, "the setup must make item 0 a hub for raw cosine"
    assert calibrated_hub <= raw_hub // 10
    assert calibrated_right > raw_right


def test_the_hubness_term_charges_items_near_many_reference_queries_more() -> None:
    world = ShopWorld()
    domain = QueryDomain.from_samples(world.reference())
    assert domain is not None
    popular = unit(world.products[:20].sum(axis=0))  # close to half of the shoppers' photos at once
    specific = world.products[30]
    centred = unit(np.stack([popular, specific]) - world.products.mean(axis=0))
    hub, specific_hub = domain.hubness(centred.astype(np.float32))
    assert hub > specific_hub


def test_from_samples_drops_bad_rows_and_needs_min_reference_good_ones() -> None:
    rng = np.random.default_rng(0)
    good = [unit(rng.normal(size=DIM)).astype(np.float32) for _ in range(MIN_REFERENCE + 5)]
    nan = np.full(DIM, np.nan, np.float32)
    inf = np.full(DIM, np.inf, np.float32)
    zero = np.zeros(DIM, np.float32)
    narrow = unit(rng.normal(size=DIM // 2)).astype(np.float32)
    domain = QueryDomain.from_samples([good[0], nan, inf, zero, narrow, *good[1:]])
    assert domain is not None
    assert len(domain) == len(good)
    assert domain.dim == DIM
    np.testing.assert_allclose(np.linalg.norm(domain.reference, axis=1), 1.0, atol=1e-5)

    too_few = good[: MIN_REFERENCE - 1] + [nan] * 10 + [narrow] * 10
    assert QueryDomain.from_samples(too_few) is None
    assert QueryDomain.from_samples([]) is None
    with pytest.raises(ValueError, match="at least"):
        QueryDomain(np.stack(good[: MIN_REFERENCE - 1]))


def test_subsampling_is_deterministic_for_a_seed_and_keeps_at_most_max_reference() -> None:
    rng = np.random.default_rng(3)
    samples = [rng.normal(size=DIM).astype(np.float32) for _ in range(300)]
    first = QueryDomain.from_samples(samples, max_reference=100, seed=7)
    again = QueryDomain.from_samples(samples, max_reference=100, seed=7)
    other = QueryDomain.from_samples(samples, max_reference=100, seed=8)
    assert first is not None
    assert again is not None
    assert other is not None
    assert len(first) == 100
    np.testing.assert_array_equal(first.reference, again.reference)
    assert not np.array_equal(first.reference, other.reference)
    all_rows = {tuple(np.round(unit(s), 5)) for s in samples}
    assert all(tuple(np.round(row, 5)) in all_rows for row in first.reference), "rows are samples, not new vectors"


def test_calibrate_shapes_and_dimension_errors() -> None:
    world = ShopWorld()
    domain = QueryDomain.from_samples(world.reference(60), beta=3.0)
    assert domain is not None
    assert domain.beta == 3.0
    mean = catalog_mean(world.catalog)
    outputs = domain.calibrate(world.photo(3), world.catalog[:7], mean)
    assert [o.shape for o in outputs] == [(7,)] * 3
    single = domain.calibrate(world.photo(3), world.catalog[5], mean)  # one candidate as a bare vector
    assert [o.shape for o in single] == [(1,)] * 3
    with pytest.raises(ValueError, match="dimensions"):
        domain.calibrate(np.ones(DIM + 1, np.float32), world.catalog[:7], mean)
    with pytest.raises(ValueError, match="candidates have 63"):
        domain.calibrate(world.photo(3), np.ones((7, DIM - 1), np.float32), mean)
    with pytest.raises(ValueError, match="candidates have 63"):  # 64·63 values: would reshape into [63, 64]
        domain.calibrate(world.photo(3), np.ones((DIM, DIM - 1), np.float32), mean)
    with pytest.raises(ValueError, match="catalog mean has 32"):
        domain.calibrate(world.photo(3), world.catalog[:7], mean[:32])
    with pytest.raises(ValueError, match="beta"):
        QueryDomain(domain.reference, beta=0.0)
    with pytest.raises(ValueError, match="finite"):
        QueryDomain(np.full((MIN_REFERENCE, DIM), np.nan, np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        catalog_mean(np.empty((0, DIM), np.float32))
