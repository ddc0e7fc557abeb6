"""Composition root: builds the services from :class:`~catalens.settings.Settings` and injected AWS clients.

Handlers call these once, at init (outside the handler function), so the ONNX session and the index cache
live as long as the execution environment. Clients are passed in — the handler creates them, tests hand in
moto-backed ones — so nothing here decides where AWS is.
"""

from __future__ import annotations

import logging
from typing import Any

from catalens.adapters.s3 import S3BlobStore
from catalens.adapters.s3_catalog import S3CatalogReader
from catalens.embedder import Embedder
from catalens.imaging import ImageLimits
from catalens.index.cache import IndexCache
from catalens.index.store import IndexStore
from catalens.ports import MetricsSink
from catalens.service.ingest import ErrorLog, IngestConfig, IngestService
from catalens.service.requests import check_query_image_limit
from catalens.service.sampling import QuerySampler
from catalens.service.search import SearchService
from catalens.service.shopper_tokens import ShopperAuth, ShopperKeysUnavailableError
from catalens.settings import Settings

ERROR_MARKERS_DIR = "ingest-errors/"  # under the index prefix: the ingest role may write there, GC never looks


def load_embedder(settings: Settings) -> Embedder:
    """The process's one embedder (one onnxruntime session); raises ModelError naming what is missing."""
    return Embedder.from_dir(settings.model_dir, settings.model_variant, threads=settings.onnx_threads)


def image_limits(settings: Settings) -> ImageLimits:
    """Limits of catalog photos (ingest)."""
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


def query_image_limits(settings: Settings) -> ImageLimits:
    """Limits of photos sent to the search API: the byte limit must let the request fit one Lambda invoke."""
    max_bytes = check_query_image_limit(settings.max_query_image_bytes)
    return ImageLimits(max_bytes=max_bytes, max_pixels=settings.max_image_pixels)


def index_store(settings: Settings, s3_client: Any) -> IndexStore:
    return IndexStore(S3BlobStore(s3_client, settings.index_bucket), settings.index_prefix)


def error_log(settings: Settings, s3_client: Any) -> ErrorLog:
    """Error markers of failed photos: ``<index prefix>ingest-errors/<bucket>/<key>.json`` in the index bucket."""
    return ErrorLog(S3BlobStore(s3_client, settings.index_bucket), settings.index_prefix + ERROR_MARKERS_DIR)


def build_search_service(
    settings: Settings,
    *,
    s3_client: Any,
    embedder: Embedder | None = None,
    profiles: Any = None,
    metrics: MetricsSink | None = None,
    background_loads: bool = True,
) -> SearchService:
    """The search service over the S3 index; ``profiles`` (a ProfileStore) turns personalisation on.

    Photo queries are calibrated with the index's query domain (``QUERY_CALIBRATION``), and a share of their
    embeddings (``QUERY_SAMPLE_RATE``) is written back to the index store for the builder to fit that domain on.
    """
    from catalens.ranking import rerank

    store = index_store(settings, s3_client)
    cache = IndexCache(store, ttl_seconds=settings.manifest_ttl_seconds, background=background_loads)
    samples = None
    if settings.query_sample_rate > 0:
        samples = QuerySampler(store, rate=settings.query_sample_rate, metrics=metrics)
    return SearchService(
        embedder=embedder or load_embedder(settings),
        views=cache.view,
        limits=query_image_limits(settings),
        profiles=profiles,
        rerank=rerank,
        metrics=metrics,
        calibration=settings.query_calibration,
        query_samples=samples,
    )


def build_ingest_service(
    settings: Settings,
    *,
    s3_client: Any,
    metrics: MetricsSink | None = None,
    embedder: Embedder | None = None,
    config: IngestConfig | None = None,
) -> IngestService:
    """The ingest service: catalog bucket in, index deltas and error markers out."""
    store = index_store(settings, s3_client)
    cache = IndexCache(store, ttl_seconds=settings.manifest_ttl_seconds, background=False)
    return IngestService(
        catalog=S3CatalogReader(s3_client),
        index=store,
        embedder=embedder or load_embedder(settings),
        views=cache.view,
        errors=error_log(settings, s3_client),
        metrics=metrics,
        config=config or IngestConfig(catalog_bucket=settings.catalog_bucket, limits=image_limits(settings)),
    )


def load_profile_store(settings: Settings, dynamodb_client: Any) -> Any:
    """The shopper-profile store for personalised re-ranking, or None when this deployment keeps no profiles.

    Erasure through it also deletes the user's raw events when the events table is configured.
    """
    if not settings.profiles_table:
        return None
    from catalens.adapters.dynamodb import DynamoProfileStore

    return DynamoProfileStore(dynamodb_client, settings.profiles_table, events_table=settings.events_table or None)


def load_shopper_auth(settings: Settings, ssm_client: Any) -> ShopperAuth:
    """Who a search or an erasure may act for: shopper tokens verified with the stack's SecureString keys.

    The keys are read now, so a cold start pays for the read instead of the first personalised request; a failed
    read is not fatal here (plain searches need no keys) and is retried when a token arrives.
    """
    keys = None
    if settings.shopper_token_parameter:
        from catalens.adapters.ssm import SsmShopperKeys

        keys = SsmShopperKeys(ssm_client, settings.shopper_token_parameter)
        try:
            keys()
        except ShopperKeysUnavailableError:
            logging.getLogger(__name__).warning("shopper-token keys unreadable at init", exc_info=True)
    return ShopperAuth(keys, trust_unsigned=settings.trust_unsigned_user_ids)
