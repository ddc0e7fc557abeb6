"""Several products per photo: candidate windows, distinct regions, and the ``groups`` option end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from catalens.groups import MAX_GROUPS, candidate_windows, overlap, select_groups
from catalens.service.errors import RequestError
from catalens.service.requests import HttpRequest, SearchOptions, SearchRequest, parse_search_request
from catalens.service.search import SearchService
from tests.unit.imagefactory import encode, photo
from tests.unit.test_search_service import StubEmbedder, view  # noqa: F401  (the fixture)


def test_windows_tile_the_photo_edge_to_edge_at_half_side_strides() -> None:
    windows = candidate_windows(640, 480, sides=(0.4,))
    side = round(0.4 * 480)
    assert all(w[2] - w[0] == side and w[3] - w[1] == side for w in windows)
    assert min(w[0] for w in windows) == 0
    assert max(w[2] for w in windows) == 640
    assert max(w[3] for w in windows) == 480
    lefts = sorted({w[0] for w in windows})
    assert max(b - a for a, b in itertools.pairwise(lefts)) <= side / 2 + 1
    assert candidate_windows(100, 100, sides=(1.0,)) == [(0, 0, 100, 100)]


def test_overlap_is_measured_against_the_smaller_box() -> None:
    assert overlap((0, 0, 100, 100), (25, 25, 75, 75)) == 1.0
    assert overlap((0, 0, 100, 100), (50, 0, 150, 100)) == 0.5
    assert overlap((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_the_best_windows_win_unless_they_repeat_a_place_or_a_product() -> None:
    windows = [(0, 0, 100, 100), (10, 10, 110, 110), (200, 0, 300, 100), (400, 0, 500, 100), (600, 0, 700, 100)]
    scores = [0.9, 0.95, 0.8, 0.85, 0.3]
    items = ["milk", "milk", "juice", "milk", "bread"]
    # (10,10) beats (0,0) at the same place; (400,0) shows milk again; (600,0) is below the objectness bar
    assert select_groups(windows, scores, items, 5, min_score=0.5) == [1, 2]
    assert select_groups(windows, scores, items, 1, min_score=0.5) == [1]
    assert select_groups(windows, scores, items, 5, min_score=0.99) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"image": "/9j/AAAA", "groups": 0}, "invalid_parameter"),
        ({"image": "/9j/AAAA", "groups": MAX_GROUPS + 1}, "invalid_parameter"),
        ({"image": "/9j/AAAA", "groups": "two"}, "invalid_parameter"),
        ({"item_id": "sku-1", "groups": 2}, "invalid_parameter"),
    ],
)
def test_groups_is_one_to_five_and_for_photos_only(body: dict, code: str) -> None:
    event = {"httpMethod": "POST", "path": "/search", "headers": {"Content-Type": "application/json"}}
    with pytest.raises(RequestError) as caught:
        parse_search_request(HttpRequest.from_event(event | {"body": json.dumps(body)}))
    assert caught.value.code == code


class BatchStub(StubEmbedder):
    """The stub's vector for every image of any batch."""

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.repeat(self.next_vector[np.newaxis], len(batch), axis=0)


def test_a_grouped_answer_has_one_result_list_per_distinct_product(view) -> None:  # noqa: F811
    embedder = BatchStub()  # every window looks like the same product: one group, however many are asked for
    service = SearchService(embedder=embedder, views=lambda: view)
    answer = service.search(SearchRequest(image=encode(photo(400, 300)), options=SearchOptions(k=2), groups=3))
    body = answer.to_dict()
    assert len(body["groups"]) == 1
    group = body["groups"][0]
    assert group["region"]["source"] == "group"
    assert [hit["item_id"] for hit in group["hits"]] == ["a", "b"]
    assert group["category"]["name"] == "shoes"
    assert embedder.calls == 2  # the photo once, its windows in one batch
    assert answer.timings.groups > 0
    assert "groups" not in service.search(SearchRequest(image=encode(photo(400, 300)))).to_dict()
    assert np.isfinite(group["score"])


def test_the_composite_benchmark_counts_found_products_and_false_regions() -> None:
    from catalens_tools.evaluation.composites import Composite, evaluate_composites

    catalog = np.eye(4, dtype=np.float32)
    placed = ((0, (0, 0, 100, 100)), (2, (200, 0, 300, 100)))
    composite = Composite("c0", b"", placed)
    boxes = [(0, 0, 100, 100), (200, 0, 300, 100), (400, 0, 500, 100)]
    vectors = np.array([[1, 0, 0, 0], [0, 0.9, 1, 0], [0, 0, 0, 1]], dtype=np.float32)  # the last: shelf clutter
    report = evaluate_composites(
        [composite], [(boxes, vectors)], catalog, lambda v: v @ catalog.T, groups=3, thresholds=(0.5, 0.95)
    )
    rows = {row["min_score"]: row for row in report["by_threshold"]}
    assert report["placed"] == 2
    assert rows[0.5]["found_in_top5"] == 1.0
    assert rows[0.5]["false_regions_per_photo"] == 1.0  # the clutter window matched a product at cosine 1
    assert rows[0.95]["found_in_top5"] == 0.5  # product 2's window (cosine 0.74) is below the bar
    assert rows[0.6]["serving"] is True
