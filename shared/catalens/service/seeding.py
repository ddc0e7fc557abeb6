"""Ingest's part in the query domain's seed: synthetic shoppers' photos of a sample of the catalog.

Query-domain calibration (:mod:`catalens.query_domain`) needs a reference of shoppers' photo embeddings; search
samples real ones, but a new shop (or a new model) has none, and until 30 exist search ranked by plain cosine.
The seed fills that gap: ingest, which holds the model and the photo, makes a
couple of synthetic shoppers' photos of the product (:func:`catalens.shopper_views.seed_views`: cut out, stood in
front of a shelf of the products this process indexed last, turned, relit, blurred, JPEG-compressed), embeds them
and stores them beside the query samples. The builder uses them only while fewer than 30 real samples exist
(calibrating from the seed alone, int8: train-as-queries top-1 0.376 → 0.465, val 0.456 → 0.498;
docs/evaluation.md).

Which items are seeded: a bottom-k sample by hash. An item's hash (:func:`catalens.query_domain.seed_item_hash`) is
compared with the ``items``-th smallest hash already seeded (one LIST, cached for ``refresh_seconds``); only a
smaller one is seeded. The seeded items are a uniform sample of the catalog whatever the upload order, and over a
catalog of N items only about ``items · (1 + ln(N / items))`` are ever seeded (≈1,300 at a million items, of 128),
each costing ``views`` forward passes once: the catalog's other items pay one LIST per ``refresh_seconds`` per
process, not a forward pass. Seeding is best effort: a failure is logged and counted, never fails the ingest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from catalens.imaging import ImageLimits, decode_image, preprocess
from catalens.ports import Embedder, MetricsSink, SeedSampleStore
from catalens.query_domain import SEED_ITEMS, SEED_VIEWS, SeedSample, seed_item_hash
from catalens.service.telemetry import NullMetrics
from catalens.shopper_views import SEED_PHOTO_SIDE, RecentShelf, seed_views

log = logging.getLogger(__name__)


class QuerySeeder:
    """Makes and stores seed samples for the items of a bottom-k sample (see the module doc).

    Parameters
    ----------
    store
        Where seed samples go (``IndexStore.queries``).
    embedder
        The process's embedder; the seed is per model (its fingerprint).
    items
        How many items the builder seeds from (0 turns seeding off).
    views
        Synthetic photos per seeded item.
    refresh_seconds
        How long the listed threshold is trusted before it is listed again.
    """

    def __init__(
        self,
        store: SeedSampleStore,
        embedder: Embedder,
        *,
        items: int = SEED_ITEMS,
        views: int = SEED_VIEWS,
        shelf: RecentShelf | None = None,
        metrics: MetricsSink | None = None,
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.items = max(0, items)
        self.views = max(1, views)
        self.shelf = shelf if shelf is not None else RecentShelf()
        self.metrics = metrics or NullMetrics()
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._fingerprint = embedder.card.fingerprint()
        self._threshold: tuple[float, str | None] | None = None  # (listed at, k-th smallest hash or None: < k)
        self._lock = threading.Lock()

    def wants(self, item_id: str) -> bool:
        """Whether ``item_id`` belongs in the seed's sample as far as this process knows."""
        if self.items == 0:
            return False
        item_hash = seed_item_hash(item_id, self._fingerprint)
        with self._lock:
            now = self._clock()
            if self._threshold is None or now - self._threshold[0] >= self.refresh_seconds:
                hashes = self.store.seed_item_hashes(model_fingerprint=self._fingerprint, items=self.items)
                self._threshold = (now, hashes[-1] if len(hashes) >= self.items else None)
            threshold = self._threshold[1]
        return threshold is None or item_hash <= threshold

    def seed(self, item_id: str, photo: bytes, limits: ImageLimits) -> int:
        """Seed ``item_id`` from its catalog ``photo`` when it is in the sample; returns the samples written.

        Never raises: the seed is an optimisation of search's first days, and the item is indexed already.
        """
        try:
            if not self.wants(item_id):
                return 0
            image = decode_image(photo, limits=limits, target_short_side=SEED_PHOTO_SIDE)
            item_hash = seed_item_hash(item_id, self._fingerprint)
            shots = seed_views(image, self.views, seed=[int(item_hash, 16) % 2**32], shelf=self.shelf)
            batch = np.stack([preprocess(shot, self.embedder.card.preprocess) for shot in shots])
            vectors = self.embedder.embed(batch)
            written = 0
            for view, vector in enumerate(vectors):
                sample = SeedSample(item_hash=item_hash, view=view, vector=np.asarray(vector, dtype=np.float32))
                if self.store.write_seed_sample(sample, model_fingerprint=self._fingerprint) is not None:
                    written += 1
            if written:
                self.metrics.emit("SeedSamples", written)
            return written
        except Exception:  # best effort: the item itself is indexed
            log.warning("no seed samples for this item", extra={"item_id": item_id}, exc_info=True)
            self.metrics.emit("SeedSampleErrors", 1)
            return 0
