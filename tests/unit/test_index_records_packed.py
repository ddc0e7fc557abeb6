"""The compact layout packs each row's record alone (deflate primed with a dictionary of sample rows).

A hit decodes its own row and nothing else; a compaction keeps the dictionary, so an unchanged row keeps its bytes;
a catalog that outgrows a dictionary learned from a few rows learns a new one; plain rows still load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from catalens.index import BuildParams, ItemRecord, Snapshot, SnapshotError, build_snapshot
from catalens.index.snapshot import (
    DICTIONARY_SAMPLE_ROWS,
    PACKED_RECORDS_FILE,
    RECORD_DICTIONARY_FILE,
    RECORDS_FILE,
    RecordTable,
)

DIM = 16
PARAMS = BuildParams(layout="compact", graph_threshold=10_000)


def record(i: int, generation: int = 1, **fields: object) -> ItemRecord:
    etag = hashlib.md5(f"{i}:{generation}".encode()).hexdigest()
    return ItemRecord(
        item_id=f"item-{i:05d}",
        vector=np.random.default_rng(i * 7 + generation).standard_normal(DIM).astype(np.float32),
        fields={"category": f"c{i % 7}", "price": i / 4, "title": f"Produkt «{i}» — grün", **fields},
        image_key=f"catalog/item-{i:05d}.jpg",
        source_etag=etag,
        sequencer=f"{generation:02X}{etag[:16].upper()}",
        updated_at=1_764_979_200.0 + i * 0.731 + generation,
    )


def build(records: list[ItemRecord], previous: Snapshot | None = None, params: BuildParams = PARAMS) -> Snapshot:
    return build_snapshot(records, model_fingerprint="fp", previous=previous, params=params, now=1_800_000_000.0)


def documents(snapshot: Snapshot) -> dict[str, dict]:
    return {snapshot.item_id(row): snapshot.records.document(row) for row in range(len(snapshot))}


def expected_document(r: ItemRecord) -> dict:
    return {
        "fields": r.fields,
        "image_key": r.image_key,
        "source_etag": r.source_etag,
        "sequencer": r.sequencer,
        "updated_at": r.updated_at,
    }


def test_compact_rows_are_packed_smaller_and_read_back_exactly():
    records = [record(i) for i in range(600)]
    snapshot = build(records)
    files = snapshot.to_files()
    assert PACKED_RECORDS_FILE in files
    assert RECORD_DICTIONARY_FILE in files
    assert RECORDS_FILE not in files
    assert json.loads(files["snapshot.json"])["records"] == {
        "encoding": "deflate-dictionary",
        "sample_rows": DICTIONARY_SAMPLE_ROWS,
    }
    plain = RecordTable.encode([expected_document(r) for r in records])
    assert snapshot.records.blob.nbytes < 0.5 * plain.blob.nbytes
    loaded = Snapshot.from_files(files)
    assert documents(loaded) == {r.item_id: expected_document(r) for r in records}
    item = loaded.item(int(loaded.row_of("item-00017")))
    assert (item.fields["title"], item.source_etag, item.sequencer) == (
        "Produkt «17» — grün",
        records[17].source_etag,
        records[17].sequencer,
    )


def test_a_compaction_keeps_the_dictionary_and_the_bytes_of_unchanged_rows():
    first = build([record(i) for i in range(400)])
    changed = [record(3, generation=2, colour="rot"), record(401)]
    second = build(changed, previous=first)
    assert second.records.codec is first.records.codec
    for item_id in ("item-00000", "item-00150", "item-00399"):
        old, new = first.row_of(item_id), second.row_of(item_id)
        assert second.records.packed(new) == first.records.packed(old)
    assert documents(second)["item-00003"] == expected_document(changed[0])
    assert documents(second)["item-00401"] == expected_document(changed[1])
    reloaded = Snapshot.from_files(second.to_files())
    assert documents(reloaded) == documents(second)


def test_a_small_catalog_that_doubles_learns_a_new_dictionary():
    small = build([record(i) for i in range(10)])
    assert small.records.codec.sample_rows == 10
    grown = build([record(i) for i in range(10, 25)], previous=small)
    assert grown.records.codec is not small.records.codec
    assert grown.records.codec.sample_rows == 25
    assert documents(grown) == {r.item_id: expected_document(r) for r in (record(i) for i in range(25))}
    same = build([record(30)], previous=grown)  # 26 rows: not yet twice 25
    assert same.records.codec is grown.records.codec


def test_a_snapshot_with_plain_rows_compacts_into_packed_rows():
    first = build([record(i) for i in range(50)])
    plain = replace(first, records=RecordTable.encode([first.records.document(r) for r in range(len(first))]))
    loaded = Snapshot.from_files(plain.to_files())
    assert loaded.records.codec is None
    assert RECORDS_FILE in plain.to_files()
    second = build([record(50)], previous=loaded)
    assert second.records.codec is not None
    assert documents(second) == {r.item_id: expected_document(r) for r in (record(i) for i in range(51))}


def test_float32_snapshots_keep_plain_rows():
    snapshot = build([record(i) for i in range(20)], params=BuildParams(layout="float32"))
    files = snapshot.to_files()
    assert RECORDS_FILE in files
    assert PACKED_RECORDS_FILE not in files
    assert RECORD_DICTIONARY_FILE not in files
    assert "records" not in json.loads(files["snapshot.json"])


def test_a_damaged_row_or_an_unknown_encoding_is_a_clear_error():
    files = dict(build([record(i) for i in range(30)]).to_files())
    damaged = bytearray(files[PACKED_RECORDS_FILE])
    damaged[-3:] = b"\xff\xff\xff"
    loaded = Snapshot.from_files({**files, PACKED_RECORDS_FILE: bytes(damaged)}, verify=False)
    last = len(loaded) - 1  # the damaged bytes end the blob: they are the last row's
    with pytest.raises(SnapshotError, match="record does not decode"):
        loaded.records.document(last)
    intact = Snapshot.from_files(files)
    assert [loaded.records.document(row) for row in range(last)] == [
        intact.records.document(row) for row in range(last)
    ]
    meta = json.loads(files["snapshot.json"])
    meta["records"]["encoding"] = "brotli"
    with pytest.raises(SnapshotError, match="unknown record encoding 'brotli'"):
        Snapshot.from_files({**files, "snapshot.json": json.dumps(meta).encode()}, verify=False)


def test_an_emptied_compact_catalog_keeps_plain_rows_and_learns_again_when_items_return():
    first = build([record(i) for i in range(5)])
    gone = [replace(record(i, generation=2), vector=None, fields={}, deleted=True) for i in range(5)]
    empty = build(gone, previous=first)
    assert len(empty) == 0
    back = build([record(7, generation=3)], previous=Snapshot.from_files(empty.to_files()))
    assert documents(back) == {"item-00007": expected_document(record(7, generation=3))}
