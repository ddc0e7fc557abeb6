"""The index format on storage, byte for byte: the same inputs must keep giving the same keys and the same bytes.

Readers of an older release load what a newer builder writes (and a rollback loads what an older one wrote), so a
refactor of the builder or the store must not change a single byte. Inputs are chosen so every float is exact
(entries of ±1, sums of squares that are perfect squares): the digests do not depend on the BLAS or the CPU.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from catalens.index.build import BuildParams, build_snapshot
from catalens.index.manifest import RetryPolicy
from catalens.index.records import ItemRecord
from catalens.index.reduce import Projection
from catalens.index.store import IndexStore
from catalens.index.transport import PART_SIZE
from catalens.query_domain import MIN_REFERENCE
from catalens_tools.in_memory.blobs import MemoryBlobStore

MODEL_DIM = 8
START = 1_800_000_000.0
FINGERPRINT = "format-model"

# The pre-split format: sha256[:16] of every file, captured from build_snapshot and IndexStore before the split;
# id_order, graph.indptr and record_offsets re-captured when they became int32/uint32 (readers take both widths:
# tests/unit/test_index_snapshot.py), and the first build's snapshot.json when its graph info said M 32.
GOLDEN_SNAPSHOTS = """
e77947f9b0435a1a  first/column.cat_category.046b3d46.npy
b0788e376be7f2f4  first/column.cat_title.6c00ed47.npy
240dd6979c6fb2e7  first/column.num_price.b1621a13.npy
35318c812bd4423a  first/graph.entry_points.npy
ce85385dfce8d0ae  first/graph.indices.npy
0cef269010fc4420  first/graph.indptr.npy
b0788e376be7f2f4  first/id_order.npy
32341d65c9c602eb  first/item_ids.npy
b361a1d5ac407e12  first/projection.components.npy
1d8162890545e644  first/projection.mean.npy
72ffbf6ae681c314  first/projection.scale.npy
3419675e809aea75  first/record_offsets.npy
bccd33c2a728c955  first/records.npy
b57dca2cdf503a51  first/snapshot.json
bf8c3d9fd782b802  first/tombstones.json
68bcbcf9b70692ad  first/vectors.npy
3c5bae9d971492f3  second/column.cat_category.046b3d46.npy
daa3afc5deae8e86  second/column.cat_title.6c00ed47.npy
89d7a928fe1a0b57  second/column.num_price.b1621a13.npy
daa3afc5deae8e86  second/id_order.npy
c2c2f4eb4f2e98ed  second/item_ids.npy
b361a1d5ac407e12  second/projection.components.npy
1d8162890545e644  second/projection.mean.npy
72ffbf6ae681c314  second/projection.scale.npy
952cef4741d4022e  second/record_offsets.npy
0e371069a0ee843b  second/records.npy
11da03870b159f90  second/snapshot.json
03827abb464d20ef  second/tombstones.json
4b153ed4abe44356  second/vectors.npy
"""
# The same builds with the lexical index stored (the builder's default since it was): every file above keeps its
# bytes except snapshot.json, which lists the new ``text.*.npy`` files (catalens.text.lexical's arrays). The impacts
# are float32 BM25 weights from numpy's log1p on a handful of short titles (not BLAS).
GOLDEN_TEXT_SNAPSHOTS = """
67ddad7b4738ef0c  first/snapshot.json
0d1ad03f7e0c2a20  first/text.df.npy
08451dd53abdd160  first/text.impacts.npy
66bada21a6997d1f  first/text.lengths.npy
a6419fc47ef36862  first/text.offsets.npy
d10d4178feb62d60  first/text.rows.npy
dd1325115787d713  first/text.terms_blob.npy
55cbd66868b44ced  first/text.terms_offsets.npy
5ef2a7c07d8acd71  second/snapshot.json
88996e4524396793  second/text.df.npy
1c2a533a4ae96681  second/text.impacts.npy
66bada21a6997d1f  second/text.lengths.npy
ff1066506710dbc7  second/text.offsets.npy
7f0edc65ca2e20b7  second/text.rows.npy
808dcffcd68a956e  second/text.terms_blob.npy
79a270bb4eb6625b  second/text.terms_offsets.npy
"""
GOLDEN_STORE = """
d317290d3b50aa72  index/deltas/shoes%2Fitem%2000/0000000000000000000000000000000a-put-434201a9d6be0717.json
186db65d52c780af  index/deltas/shoes%2Fitem%2001/0000000000000000000000000000000b-put-9d58137f115a2740.json
6a24946df4ab4d8e  index/deltas/shoes%2Fitem%2002/0000000000000000000000000000000c-put-1890f1d0a6c0fdac.json
74c28fef4f301827  index/deltas/shoes%2Fitem%2002/00000000000000000000000000000028-put-50d2e5fd1812e1f4.json
93d5a3123f986657  index/deltas/shoes%2Fitem%2003/0000000000000000000000000000000d-put-00ae2052157e500a.json
916064041e796986  index/deltas/shoes%2Fitem%2003/00000000000000000000000000000041-del-c7a3b9c58c58d5a2.json
889e8ed89d73b17d  index/deltas/shoes%2Fitem%2004/0000000000000000000000000000000e-put-0876b2d0379b5bf8.json
5d1a131f1d7936f0  index/deltas/shoes%2Fitem%2005/0000000000000000000000000000000f-put-854196a1ba1681e7.json
97498aa6840d1a0c  index/deltas/shoes%2Fitem%2007/00000000000000000000000000000009-del-f452dec03eed2919.json
3188963cb0248a09  index/manifest.json
83055bf8ee95f6f8  index/queries/reference/83055bf8ee95f6f82f3b5cb1.npz
b69a134706a6adc1  index/queries/samples/format-model/2027-01-15/1800000029000-00000000000000000000000000000022.npy
3de44aeea9fd5009  index/queries/samples/format-model/2027-01-15/1800000030000-00000000000000000000000000000021.npy
52d033c1b84621be  index/queries/samples/format-model/2027-01-15/1800000031000-00000000000000000000000000000020.npy
b78c4b96be621650  index/queries/samples/format-model/2027-01-15/1800000032000-0000000000000000000000000000001f.npy
0bbcf9eacb9bb804  index/queries/samples/format-model/2027-01-15/1800000033000-0000000000000000000000000000001e.npy
1352c8130f42e129  index/queries/samples/format-model/2027-01-15/1800000034000-0000000000000000000000000000001d.npy
640fe5b8c3c8480e  index/queries/samples/format-model/2027-01-15/1800000035000-0000000000000000000000000000001c.npy
621cbf876ce041b8  index/queries/samples/format-model/2027-01-15/1800000036000-0000000000000000000000000000001b.npy
d6e138aa14f37f0c  index/queries/samples/format-model/2027-01-15/1800000037000-0000000000000000000000000000001a.npy
a92f64da7328577c  index/queries/samples/format-model/2027-01-15/1800000038000-00000000000000000000000000000019.npy
0a32824bb62bab39  index/queries/samples/format-model/2027-01-15/1800000039000-00000000000000000000000000000018.npy
54bfa8769a624a7b  index/queries/samples/format-model/2027-01-15/1800000040000-00000000000000000000000000000017.npy
1d89a60afaea44ce  index/queries/samples/format-model/2027-01-15/1800000041000-00000000000000000000000000000016.npy
256c4e35b691dc46  index/queries/samples/format-model/2027-01-15/1800000042000-00000000000000000000000000000015.npy
b51b46df89326d12  index/queries/samples/format-model/2027-01-15/1800000043000-00000000000000000000000000000014.npy
003bb2c56894e5fc  index/queries/samples/format-model/2027-01-15/1800000044000-00000000000000000000000000000013.npy
6401739b67c2f6fd  index/queries/samples/format-model/2027-01-15/1800000045000-00000000000000000000000000000012.npy
ccbdf029ff008f16  index/queries/samples/format-model/2027-01-15/1800000046000-00000000000000000000000000000011.npy
17f52842572efe9c  index/queries/samples/format-model/2027-01-15/1800000047000-00000000000000000000000000000010.npy
0603fa07eb13b119  index/queries/samples/format-model/2027-01-15/1800000048000-0000000000000000000000000000000f.npy
92c19c31626077d3  index/queries/samples/format-model/2027-01-15/1800000049000-0000000000000000000000000000000e.npy
cc16823722a86f6d  index/queries/samples/format-model/2027-01-15/1800000050000-0000000000000000000000000000000d.npy
5408371832085a44  index/queries/samples/format-model/2027-01-15/1800000051000-0000000000000000000000000000000c.npy
7fd78a6f40030dc5  index/queries/samples/format-model/2027-01-15/1800000052000-0000000000000000000000000000000b.npy
cbc5933a1804ec70  index/queries/samples/format-model/2027-01-15/1800000053000-0000000000000000000000000000000a.npy
5a9f00ffe0effa34  index/queries/samples/format-model/2027-01-15/1800000054000-00000000000000000000000000000009.npy
0f52353199c2fb7f  index/queries/samples/format-model/2027-01-15/1800000055000-00000000000000000000000000000008.npy
bc9e0d81637b97e5  index/queries/samples/format-model/2027-01-15/1800000056000-00000000000000000000000000000007.npy
4193c88188fc132a  index/queries/samples/format-model/2027-01-15/1800000057000-00000000000000000000000000000006.npy
ab5860f4168d1883  index/queries/samples/format-model/2027-01-15/1800000058000-00000000000000000000000000000005.npy
3e9f74977f7fb333  index/queries/samples/format-model/2027-01-15/1800000059000-00000000000000000000000000000004.npy
c26d8a1569274ff7  index/queries/samples/format-model/2027-01-15/1800000060000-00000000000000000000000000000003.npy
0436fce3d42d4580  index/versions/00000001-000000000000/ledger.json
7fd2f7063896d75f  index/versions/00000001-000000000000/snapshot/column.cat_category.046b3d46.npy
7631a0b68229b197  index/versions/00000001-000000000000/snapshot/column.cat_title.6c00ed47.npy
65d60bda4018f0a5  index/versions/00000001-000000000000/snapshot/column.num_price.b1621a13.npy
7631a0b68229b197  index/versions/00000001-000000000000/snapshot/id_order.npy
b6df0ca47991bf35  index/versions/00000001-000000000000/snapshot/item_ids.npy
8f01af3febb1724c  index/versions/00000001-000000000000/snapshot/record_offsets.npy
ca8326082ce06337  index/versions/00000001-000000000000/snapshot/records.npy
88f67605d3d9c44f  index/versions/00000001-000000000000/snapshot/snapshot.json
8539e815ca440d71  index/versions/00000001-000000000000/snapshot/tombstones.json
45d80de8a01c2e43  index/versions/00000001-000000000000/snapshot/vectors.npy
023451385470fe94  index/versions/00000002-000000000000/ledger.json
b0a61c449e8af03a  index/versions/00000002-000000000000/snapshot/column.cat_category.046b3d46.npy
bdad22b13216ce0a  index/versions/00000002-000000000000/snapshot/column.cat_title.6c00ed47.npy
5683136039adb6e6  index/versions/00000002-000000000000/snapshot/column.num_price.b1621a13.npy
bdad22b13216ce0a  index/versions/00000002-000000000000/snapshot/id_order.npy
ac6305433c95317a  index/versions/00000002-000000000000/snapshot/item_ids.npy
5cfeaebb036237c6  index/versions/00000002-000000000000/snapshot/record_offsets.npy
a5c1bd769dacbf46  index/versions/00000002-000000000000/snapshot/records.npy
b31884f43ff99b5c  index/versions/00000002-000000000000/snapshot/snapshot.json
f9da40759ad3f060  index/versions/00000002-000000000000/snapshot/tombstones.json
345fd703abbca6a2  index/versions/00000002-000000000000/snapshot/vectors.npy
"""

# Version files above the part size are stored as ``<name>.part-NNNNN`` objects and their manifest entries list the
# parts (catalens.index.transport). Pinned with a 256-byte part size so the tiny test files split; the objects of
# files that fit one part, the deltas and the query objects are the same bytes as in GOLDEN_STORE.
PARTS_SIZE = 256
GOLDEN_STORE_IN_PARTS = """
4d21c4d520484867  index/manifest.json
4590cf65166ef3bc  index/versions/00000001-000000000000/ledger.json.part-00000
dc4def2f036806e1  index/versions/00000001-000000000000/ledger.json.part-00001
7fd2f7063896d75f  index/versions/00000001-000000000000/snapshot/column.cat_category.046b3d46.npy
7631a0b68229b197  index/versions/00000001-000000000000/snapshot/column.cat_title.6c00ed47.npy
65d60bda4018f0a5  index/versions/00000001-000000000000/snapshot/column.num_price.b1621a13.npy
7631a0b68229b197  index/versions/00000001-000000000000/snapshot/id_order.npy
b6df0ca47991bf35  index/versions/00000001-000000000000/snapshot/item_ids.npy
8f01af3febb1724c  index/versions/00000001-000000000000/snapshot/record_offsets.npy
25135d60fed23657  index/versions/00000001-000000000000/snapshot/records.npy.part-00000
5ee3c1c86a6b820c  index/versions/00000001-000000000000/snapshot/records.npy.part-00001
3b66e6d29e724b3f  index/versions/00000001-000000000000/snapshot/records.npy.part-00002
f718e8ee3a74fe88  index/versions/00000001-000000000000/snapshot/records.npy.part-00003
f82d133f49afa291  index/versions/00000001-000000000000/snapshot/records.npy.part-00004
87f87b8e55a96d79  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00000
5d14b486adb3e707  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00001
559cf9b977aef775  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00002
bf0df3d24eae83aa  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00003
a1b7bf0ea9c35c48  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00004
d562c5911ee97ba4  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00005
61ff77a2ca7e43d2  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00006
49acf112e15da7b1  index/versions/00000001-000000000000/snapshot/snapshot.json.part-00007
8539e815ca440d71  index/versions/00000001-000000000000/snapshot/tombstones.json
3a3603e4ad665dc6  index/versions/00000001-000000000000/snapshot/vectors.npy.part-00000
de66d9ae6e13a94d  index/versions/00000001-000000000000/snapshot/vectors.npy.part-00001
72409134c793adb3  index/versions/00000002-000000000000/ledger.json.part-00000
705848a38b6e3ebc  index/versions/00000002-000000000000/ledger.json.part-00001
b0a61c449e8af03a  index/versions/00000002-000000000000/snapshot/column.cat_category.046b3d46.npy
bdad22b13216ce0a  index/versions/00000002-000000000000/snapshot/column.cat_title.6c00ed47.npy
5683136039adb6e6  index/versions/00000002-000000000000/snapshot/column.num_price.b1621a13.npy
bdad22b13216ce0a  index/versions/00000002-000000000000/snapshot/id_order.npy
ac6305433c95317a  index/versions/00000002-000000000000/snapshot/item_ids.npy
5cfeaebb036237c6  index/versions/00000002-000000000000/snapshot/record_offsets.npy
b3d01772740a5900  index/versions/00000002-000000000000/snapshot/records.npy.part-00000
5ee3c1c86a6b820c  index/versions/00000002-000000000000/snapshot/records.npy.part-00001
2b7303f441fde3ef  index/versions/00000002-000000000000/snapshot/records.npy.part-00002
65ea85b0b2f0c7ad  index/versions/00000002-000000000000/snapshot/records.npy.part-00003
3a35d60a16e9a228  index/versions/00000002-000000000000/snapshot/records.npy.part-00004
87f87b8e55a96d79  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00000
de42b9d393b452fa  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00001
460137fefad3ce69  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00002
60db46269f36afd3  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00003
0fd0c427c39e8190  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00004
efa952e487d1e25c  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00005
001e3dba458c052d  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00006
938b2eac29101476  index/versions/00000002-000000000000/snapshot/snapshot.json.part-00007
f9da40759ad3f060  index/versions/00000002-000000000000/snapshot/tombstones.json
d512c1a3f2649d25  index/versions/00000002-000000000000/snapshot/vectors.npy.part-00000
4e141e52872d3bb2  index/versions/00000002-000000000000/snapshot/vectors.npy.part-00001
"""


def signs(i: int) -> np.ndarray:
    """A ±1 vector per item (bits of ``i``): exact under any normalisation or projection below."""
    return np.array([1.0 if (i >> bit) & 1 else -1.0 for bit in range(MODEL_DIM)], dtype=np.float32)


def record(i: int, seq: int, *, deleted: bool = False, etag: str = "") -> ItemRecord:
    fields = {"title": f"item {i}", "price": float(i % 5) + 0.5, "category": f"c{i % 3}", "tags": [f"t{i % 2}"]}
    return ItemRecord(
        item_id=f"shoes/item {i:02d}",
        vector=None if deleted else signs(i * 37 + 11),
        fields={} if deleted else fields,
        image_key=f"photos/item {i:02d}.jpg",
        source_etag="" if deleted else (etag or f"etag-{i}"),
        sequencer=f"{seq:016X}",
        deleted=deleted,
        updated_at=START + seq,
    )


def ring_graph(vectors: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stand-in for pynndescent (whose graph depends on its version): rows reversed, each linked to the next two."""
    n = vectors.shape[0]
    order = np.arange(n)[::-1].copy()
    indices = np.array([[(i + 1) % n, (i + 2) % n] for i in range(n)], dtype=np.int32).reshape(-1)
    return order, np.arange(0, 2 * n + 1, 2, dtype=np.int64), indices


def listing(files: dict[str, bytes]) -> str:
    """``sha256[:16]  name`` per file, sorted by name (the shape of the golden values)."""
    return "".join(f"{hashlib.sha256(data).hexdigest()[:16]}  {name}\n" for name, data in sorted(files.items()))


@pytest.fixture
def frozen_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build timings land in snapshot.json; a frozen timer makes them 0.0 so the bytes are stable."""
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)


@pytest.fixture
def counted_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Version names and sample keys carry a uuid4; a counter makes them repeatable."""
    counter = iter(range(1, 1_000))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))


def build_snapshots(*, text_index: bool = False) -> str:
    """A first build (projection and graph) and a compaction of it (updates, a delete, an expired tombstone).

    Without ``text_index`` the builder writes what it wrote before the lexical index was stored (the bytes an
    older reader and a rollback see are pinned by GOLDEN_SNAPSHOTS); with it, GOLDEN_TEXT_SNAPSHOTS pins the rest.
    """
    projection = Projection(
        "pca",
        mean=np.zeros(MODEL_DIM, np.float32),
        components=np.eye(MODEL_DIM, 4, dtype=np.float32),
        scale=np.ones(4, np.float32),
    )
    first = build_snapshot(
        [record(i, seq=10 + i) for i in range(8)] + [record(20, seq=5, deleted=True)],
        model_fingerprint=FINGERPRINT,
        params=BuildParams(
            layout="float32",
            projection=projection,
            graph_threshold=4,
            entry_points=1,
            graph_builder=ring_graph,
            text_index=text_index,
        ),
        now=START,
    )
    second = build_snapshot(
        [
            record(1, seq=30, etag="etag-1b"),
            record(2, seq=31, deleted=True),
            record(3, seq=2, deleted=True),
            record(9, seq=32),
        ],
        model_fingerprint=FINGERPRINT,
        previous=first,
        params=BuildParams(layout="float32", graph_threshold=1_000, tombstone_ttl_seconds=10.0, text_index=text_index),
        now=START + 40,
    )
    files = {f"first/{name}": data for name, data in first.to_files().items()}
    files.update({f"second/{name}": data for name, data in second.to_files().items()})
    return listing(files)


def store_objects(part_size: int = PART_SIZE) -> str:
    """Every object an index holds after ingest, two compactions, a query-domain refresh and a rollback."""
    now = [START]
    blob = MemoryBlobStore(clock=lambda: datetime.fromtimestamp(now[0], UTC))
    store = IndexStore(
        blob, "index/", retry=RetryPolicy(base_delay=0.0), wall_clock=lambda: now[0], part_size=part_size
    )

    def build(records: Iterator[ItemRecord], **kwargs: object):
        # format 1 (float32) is what every release reads; the compact format's PCA is not bit-exact across BLAS
        kwargs["params"] = BuildParams(layout="float32", text_index=False)
        return build_snapshot(records, now=now[0], **kwargs)

    for i in range(6):
        store.write_item(record(i, seq=10 + i), model_fingerprint=FINGERPRINT)
    store.delete_item("shoes/item 07", sequencer="9", image_key="photos/item 07.jpg", updated_at=START)
    first = store.compact(build, model_fingerprint=FINGERPRINT).version
    now[0] += 60
    store.write_item(record(2, seq=40, etag="etag-2b"), model_fingerprint=FINGERPRINT)
    store.delete_item("shoes/item 03", sequencer="41", image_key="photos/item 03.jpg", updated_at=now[0])
    store.compact(build)
    for i in range(MIN_REFERENCE + 2):
        sample = signs(i * 7 + 3) / 4  # entries ±0.25: exact in float16
        store.queries.write_query_sample(sample, model_fingerprint=FINGERPRINT, now=now[0] - i)
    store.queries.refresh_query_domain(now=now[0])
    now[0] += 60
    store.rollback(first)
    return listing({info.key: blob.get(info.key).data for info in blob.list("")})


def test_snapshot_files_are_byte_for_byte_the_pre_split_format(frozen_timers: None) -> None:
    assert build_snapshots() == GOLDEN_SNAPSHOTS.lstrip("\n")


def test_snapshot_files_with_the_lexical_index_add_text_files_only(frozen_timers: None) -> None:
    with_text = build_snapshots(text_index=True).splitlines(keepends=True)
    golden = GOLDEN_SNAPSHOTS.lstrip("\n").splitlines(keepends=True)
    changed = [line for line in with_text if line.endswith("/snapshot.json\n") or "/text." in line]
    assert "".join(changed) == GOLDEN_TEXT_SNAPSHOTS.lstrip("\n")
    assert [line for line in with_text if line not in changed] == [
        line for line in golden if not line.endswith("/snapshot.json\n")
    ]


def test_store_objects_are_byte_for_byte_the_pre_split_format(frozen_timers: None, counted_uuids: None) -> None:
    assert store_objects() == GOLDEN_STORE.lstrip("\n")


def test_store_objects_in_parts_are_byte_for_byte_the_parts_format(frozen_timers: None, counted_uuids: None) -> None:
    objects = store_objects(part_size=PARTS_SIZE).splitlines(keepends=True)
    pinned = [line for line in objects if "index/versions/" in line or line.endswith("index/manifest.json\n")]
    assert "".join(pinned) == GOLDEN_STORE_IN_PARTS.lstrip("\n")
    unsplit = GOLDEN_STORE.lstrip("\n").splitlines(keepends=True)
    assert [line for line in objects if ".part-" not in line and line not in pinned] == [
        line for line in unsplit if "index/versions/" not in line and not line.endswith("index/manifest.json\n")
    ]
    assert [line for line in objects if "index/versions/" in line and ".part-" not in line] == [
        line for line in unsplit if any(line.endswith(f"/{name}\n") for name in _UNSPLIT_NAMES)
    ]


_UNSPLIT_NAMES = (  # the version files below PARTS_SIZE keep their keys and bytes
    "column.cat_category.046b3d46.npy",
    "column.cat_title.6c00ed47.npy",
    "column.num_price.b1621a13.npy",
    "id_order.npy",
    "item_ids.npy",
    "record_offsets.npy",
    "tombstones.json",
)
