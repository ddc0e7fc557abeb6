"""Ordering of item states by S3 sequencer."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.index.records import ItemRecord, is_newer, sequencer_key


def _record(seq: str, *, deleted: bool = False) -> ItemRecord:
    vector = None if deleted else np.ones(4, dtype=np.float32)
    return ItemRecord("item", vector, {}, "photos/item.jpg", "etag", seq, deleted=deleted)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0A", "0B"),
        ("0A", "00FF"),  # shorter is padded with leading zeros: 0x0A < 0xFF
        ("FF", "100"),
        ("0062E99A88DC407460", "0062E99A88DC407461"),
        ("62e99a88dc407460", "0062E99A88DC407461"),  # case and leading zeros do not matter
        ("", "1"),
    ],
)
def test_sequencer_key_orders_like_zero_padded_hex(older, newer):
    assert sequencer_key(older) < sequencer_key(newer)
    width = max(len(older), len(newer))
    assert older.zfill(width).lower() < newer.zfill(width).lower()  # the rule AWS documents


def test_sequencer_key_ignores_padding_and_case():
    assert sequencer_key("00ab") == sequencer_key("AB")


def test_sequencer_key_rejects_non_hex():
    with pytest.raises(ValueError, match="hexadecimal"):
        sequencer_key("12xz")


def test_later_sequencer_wins_and_tombstone_wins_a_tie():
    assert is_newer(_record("2"), None)
    assert is_newer(_record("10"), _record("0f"))
    assert not is_newer(_record("0f"), _record("10"))
    assert is_newer(_record("5", deleted=True), _record("5"))
    assert not is_newer(_record("5"), _record("5", deleted=True))
    assert not is_newer(_record("5"), _record("5"))  # a duplicate delivery changes nothing
