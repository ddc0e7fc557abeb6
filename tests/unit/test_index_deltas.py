"""Delta keys and the delta codec: what ingest writes per S3 event, and what a reader makes of it."""

from __future__ import annotations

import numpy as np

from catalens.index.deltas import DeltaKey, decode_delta, delta_key, encode_delta
from tests.unit.test_index_store import del_event, put_event


def test_delta_round_trips_exactly_with_awkward_item_ids() -> None:
    for item_id in ["a/b c", "100%/ü", "x-y-z", "tab\there"]:
        record = put_event(item_id, "00AB12", '"etag-1"')
        key = delta_key(record)
        parsed = DeltaKey.parse(key)
        assert parsed == DeltaKey(item_id=item_id, sequencer="ab12", deleted=False)
        decoded = decode_delta(encode_delta(record, model_fingerprint="m")).record
        assert decoded.item_id == item_id
        assert decoded.vector.dtype == np.float32
        np.testing.assert_array_equal(decoded.vector, record.vector)
        assert (decoded.fields, decoded.sequencer, decoded.source_etag) == (
            record.fields,
            record.sequencer,
            record.source_etag,
        )
    tombstone_key = delta_key(del_event("a", "0f"))
    assert DeltaKey.parse(tombstone_key) == DeltaKey("a", "f", True)


def test_delta_key_depends_on_the_event_not_on_the_delivery() -> None:
    first = put_event("item", "0A", "e1")
    assert delta_key(first) == delta_key(put_event("item", "a", "e1")), "same event, same key (leading zeros, case)"
    assert delta_key(first) != delta_key(put_event("item", "0B", "e1")), "re-upload of the same bytes is a new event"
    assert delta_key(first) != delta_key(put_event("item", "0A", "e2"))
    assert delta_key(first) != delta_key(del_event("item", "0A"))
