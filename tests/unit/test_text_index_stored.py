"""The lexical index stored with a snapshot: its files, older snapshots without them, and the same answers."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.index import IndexView, ItemRecord, build_snapshot
from catalens.index.build import BuildParams
from catalens.index.snapshot import Snapshot, SnapshotError, is_text_file
from catalens.text.catalog import TextIndexLoadingError, built_index
from catalens.text.lexical import LexicalIndex
from tests.unit.test_search_service import unit

TITLES = ("Oat milk", "Whole milk 3.5%", "Oatly oat drink barista", "Crème fraîche", "Lactose free milk 1,5%")
QUERIES = ("oat milk", "milk", "creme", "1.5", "barista oat", "lactose free", "nothing")


def records(n: int = 40) -> list[ItemRecord]:
    out = []
    for i in range(n):
        fields = {
            "title": f"{TITLES[i % len(TITLES)]} {i}",
            "brand": ["Oatly", "Arla", "Valio"][i % 3],
            "tags": ["dairy", "organic"][: 1 + i % 2],
            "description": "fresh " * (i % 4),
            "price": i + 0.5,
        }
        out.append(ItemRecord(f"item-{i:03d}", unit(1, 0.01 * i), fields, f"{i}.jpg", "e", f"{i + 1:08X}"))
    return out


def lazily_built(snapshot: Snapshot) -> LexicalIndex:
    """What a reader builds for a snapshot without a stored index (catalens.text.catalog's fallback)."""
    records_ = snapshot.records
    return LexicalIndex.build(records_.document(row)["fields"] for row in range(len(records_)))


@pytest.mark.parametrize("layout", ["compact", "float32"])
def test_the_index_round_trips_through_the_snapshot_files(layout: str) -> None:
    snapshot = build_snapshot(records(), model_fingerprint="fp", params=BuildParams(layout=layout))
    files = dict(snapshot.to_files())
    names = sorted(name for name in files if is_text_file(name))
    assert names == [f"text.{name}.npy" for name in sorted(LexicalIndex.from_term_counts([]).to_arrays())]
    loaded = Snapshot.from_files(files)
    assert loaded.text is not None
    assert loaded.complete
    for name, array in snapshot.text.to_arrays().items():
        np.testing.assert_array_equal(loaded.text.to_arrays()[name], array)
    assert loaded.text.terms == snapshot.text.terms
    assert (
        loaded.resident_bytes()
        > Snapshot.from_files(
            {n: d for n, d in files.items() if not is_text_file(n)}, first_stage=True
        ).resident_bytes()
    )


def test_every_text_file_is_listed_sized_and_hashed() -> None:
    files = dict(build_snapshot(records(), model_fingerprint="fp").to_files())
    name = "text.impacts.npy"
    with pytest.raises(SnapshotError, match="missing"):
        Snapshot.from_files({n: d for n, d in files.items() if n != name})
    with pytest.raises(SnapshotError, match="bytes"):
        Snapshot.from_files({**files, name: files[name][:-4]})
    altered = bytearray(files[name])
    altered[-1] ^= 1
    with pytest.raises(SnapshotError, match="sha256"):
        Snapshot.from_files({**files, name: bytes(altered)})


def test_a_first_stage_without_the_text_files_refuses_text_queries_until_they_come() -> None:
    files = dict(build_snapshot(records(), model_fingerprint="fp").to_files())
    first = Snapshot.from_files({n: d for n, d in files.items() if not is_text_file(n)}, first_stage=True)
    assert first.text is None
    assert first.text_pending
    assert not first.complete
    assert set(first.second_stage_files()) >= {n for n in files if is_text_file(n)}
    with pytest.raises(TextIndexLoadingError):
        IndexView(first).search_text("oat", 3)
    assert IndexView(first).search(unit(1, 0.05), 1)  # vectors answer meanwhile
    full = first.with_full_vectors({n: files[n] for n in first.second_stage_files()})
    assert full.complete
    assert not full.text_pending
    assert [h.item_id for h in IndexView(full).search_text("oat", 3)]


def test_an_older_snapshot_without_the_index_still_loads_and_builds_it_on_the_first_text_query() -> None:
    older = build_snapshot(records(), model_fingerprint="fp", params=BuildParams(text_index=False))
    files = dict(older.to_files())
    assert not any(is_text_file(n) for n in files)
    loaded = Snapshot.from_files(files)
    assert loaded.text is None
    assert not loaded.text_pending
    assert loaded.complete
    assert built_index(loaded) is None
    hits = IndexView(loaded).search_text("oat milk", 5)
    assert hits
    assert built_index(loaded) is not None


def test_stored_and_lazily_built_indexes_give_the_same_scores_and_rows() -> None:
    stored = build_snapshot(records(200), model_fingerprint="fp")
    lazy = build_snapshot(records(200), model_fingerprint="fp", params=BuildParams(text_index=False))
    assert stored.text is not None
    assert lazy.text is None
    rebuilt = lazily_built(stored)
    for name, array in rebuilt.to_arrays().items():
        np.testing.assert_array_equal(stored.text.to_arrays()[name], array)
    fresh = ItemRecord("fresh", unit(0, 1), {"title": "Oat milk barista"}, "f.jpg", "e", "FFFFFFFF")
    for query in QUERIES:
        a = [(h.item_id, h.score) for h in IndexView(stored, [fresh]).search_text(query, 25)]
        b = [(h.item_id, h.score) for h in IndexView(lazy, [fresh]).search_text(query, 25)]
        assert a == b
        ids = [f"item-{i:03d}" for i in range(0, 200, 7)]
        np.testing.assert_array_equal(
            IndexView(stored).text_scores(query, ids), IndexView(lazy).text_scores(query, ids)
        )


def test_a_compaction_rebuilds_the_index_over_the_new_rows() -> None:
    first = build_snapshot(records(), model_fingerprint="fp")
    changed = ItemRecord("item-001", unit(1, 0.01), {"title": "Rye bread"}, "1.jpg", "e2", "F0000000")
    second = build_snapshot([changed], model_fingerprint="fp", previous=first)
    assert second.text is not None
    for name, array in lazily_built(second).to_arrays().items():
        np.testing.assert_array_equal(second.text.to_arrays()[name], array)
    assert [h.item_id for h in IndexView(second).search_text("rye", 3)] == ["item-001"]


def test_postings_packed_in_blocks_match_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import catalens.text.lexical as lexical

    documents = [r.fields for r in records(120)]
    whole = LexicalIndex.build(documents)
    monkeypatch.setattr(lexical, "_BLOCK_POSTINGS", 7)
    blocked = LexicalIndex.build(documents)
    for name, array in whole.to_arrays().items():
        np.testing.assert_array_equal(blocked.to_arrays()[name], array)


def test_the_service_answers_text_queries_503_and_health_says_loading_until_the_words_come() -> None:
    from catalens.service.errors import http_status_for
    from catalens.service.requests import SearchOptions, SearchRequest
    from catalens.service.search import SearchService
    from tests.unit.test_search_service import StubEmbedder

    files = dict(build_snapshot(records(), model_fingerprint="stub-fp").to_files())
    first = Snapshot.from_files({n: d for n, d in files.items() if not is_text_file(n)}, first_stage=True)
    current = [IndexView(first)]
    service = SearchService(embedder=StubEmbedder(), views=lambda: current[0])
    assert service.health()["index"]["words"] == "loading"
    with pytest.raises(TextIndexLoadingError) as caught:
        service.search(SearchRequest(text="oat milk", options=SearchOptions(k=3)))
    assert (caught.value.code, http_status_for(caught.value)) == ("index_unavailable", 503)
    current[0] = IndexView(first.with_full_vectors({n: files[n] for n in first.second_stage_files()}))
    assert service.health()["index"]["words"] == "ready"
    assert service.search(SearchRequest(text="oat milk", options=SearchOptions(k=3))).hits
    older = build_snapshot(records(), model_fingerprint="stub-fp", params=BuildParams(text_index=False))
    current[0] = IndexView(older)
    assert service.health()["index"]["words"] == "lazy"
