"""Composition root: builds what each of the four functions runs, from :class:`~catalens.settings.Settings` and AWS
clients.

Handlers call one builder each, once, at init (outside the handler function), so the ONNX session and the index
cache live as long as the execution environment. Clients are injected the way Powertools takes them: a test hands in
its own (moto-backed) ones, a handler leaves them out and gets ``boto3.client(...)``; settings likewise default to
this process's environment. Given the handler's Powertools ``logger``, a builder gives the core's loggers its
configuration once everything is built (their lines come out as the function's JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from catalens.adapters.s3 import S3BlobStore
from catalens.adapters.s3_catalog import S3CatalogReader
from catalens.embedder import Embedder
from catalens.imaging import ImageLimits
from catalens.index.cache import IndexCache
from catalens.index.store import IndexStore
from catalens.index.view import SearchParams
from catalens.ports import IndexReader, IndexWriter, MetricsSink, ProfileStore
from catalens.profiles import ProfileUpdater, index_lookup
from catalens.service.api import search_api
from catalens.service.builder import IndexBuilder
from catalens.service.http import RestResolver
from catalens.service.ingest import ErrorLog, IngestConfig, IngestService
from catalens.service.profile_stream import ProfileStream
from catalens.service.requests import check_query_image_limit
from catalens.service.sampling import QuerySampler
from catalens.service.search import SearchService
from catalens.service.seeding import QuerySeeder
from catalens.service.shopper_tokens import ShopperAuth, ShopperKeysUnavailableError
from catalens.settings import Settings, load_settings

if TYPE_CHECKING:
    from catalens.adapters.s3vectors import S3VectorsIndex

ERROR_MARKERS_DIR = "ingest-errors/"  # under the index prefix: the ingest role may write there, GC never looks


def load_embedder(settings: Settings) -> Embedder:
    """The process's one embedder (one onnxruntime session); raises ModelError naming what is missing."""
    return Embedder.from_dir(settings.model_dir, settings.model_variant, threads=settings.onnx_threads)


def load_text_reader(settings: Settings) -> Any:
    """The OCR reader for catalog photos (:mod:`catalens.ocr`), or None when ``READ_TEXT`` is off or the model
    folder has no OCR models (a model layer built with ``--no-ocr``: logged, ingest goes on without read text)."""
    if not settings.read_text:
        return None
    from catalens.ocr import DETECTOR_FILE, TextReader

    folder = settings.model_dir / "ocr"
    if not (folder / DETECTOR_FILE).is_file():
        logging.getLogger(__name__).warning("no OCR models in %s: catalog photos are indexed without read_text", folder)
        return None
    return TextReader.from_dir(folder, threads=settings.onnx_threads)


def image_limits(settings: Settings) -> ImageLimits:
    """Limits of catalog photos (ingest)."""
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


def query_image_limits(settings: Settings) -> ImageLimits:
    """Limits of photos sent to the search API: the byte limit must let the request fit one Lambda invoke."""
    max_bytes = check_query_image_limit(settings.max_query_image_bytes)
    return ImageLimits(max_bytes=max_bytes, max_pixels=settings.max_image_pixels)


def index_store(settings: Settings, s3_client: Any) -> IndexStore:
    """The index on S3 (``<index bucket>/<index prefix>``): what every function reads or writes."""
    params = SearchParams.for_candidates(settings.search_candidates) if settings.search_candidates else None
    return IndexStore(S3BlobStore(s3_client, settings.index_bucket), settings.index_prefix, search_params=params)


def vector_index(
    settings: Settings, s3_client: Any, s3vectors_client: Any = None, *, calibrate: bool = False
) -> S3VectorsIndex:
    """The S3 Vectors index (``INDEX_BACKEND=s3vectors``), with its tombstones and stats in the index bucket.

    With ``calibrate`` its views carry the query domain the manifest names for the index's model.
    """
    from catalens.adapters.s3vectors import S3VectorsIndex
    from catalens.index.query_domain_store import ManifestQueryDomains

    if not settings.vector_bucket or not settings.vector_index:
        raise ValueError("INDEX_BACKEND=s3vectors needs VECTOR_BUCKET and VECTOR_INDEX")
    store = index_store(settings, s3_client)
    return S3VectorsIndex(
        boto3.client("s3vectors") if s3vectors_client is None else s3vectors_client,
        vector_bucket=settings.vector_bucket,
        index_name=settings.vector_index,
        blob=store.blob,
        prefix=settings.index_prefix,
        ttl_seconds=settings.manifest_ttl_seconds,
        query_domain=ManifestQueryDomains(store.queries) if calibrate else None,
    )


def index_backend(
    settings: Settings,
    s3_client: Any,
    s3vectors_client: Any = None,
    *,
    background_loads: bool = False,
    calibrate: bool = False,
    staged: bool = True,
) -> tuple[IndexWriter, Callable[[], IndexReader]]:
    """What ingest writes through and where readers get the current view, for ``settings.index_backend``."""
    if settings.index_backend == "s3vectors":
        index = vector_index(settings, s3_client, s3vectors_client, calibrate=calibrate)
        return index, index.view
    store = index_store(settings, s3_client)
    cache = IndexCache(store, ttl_seconds=settings.manifest_ttl_seconds, background=background_loads, staged=staged)
    return store, cache.view


def error_log(settings: Settings, s3_client: Any) -> ErrorLog:
    """Error markers of failed photos: ``<index prefix>ingest-errors/<bucket>/<key>.json`` in the index bucket."""
    return ErrorLog(S3BlobStore(s3_client, settings.index_bucket), settings.index_prefix + ERROR_MARKERS_DIR)


def share_logging(logger: Logger | None) -> None:
    """Give the core's loggers the handler's configuration, so their lines come out as the same JSON."""
    if logger is not None:
        copy_config_to_registered_loggers(source_logger=logger, include={"catalens"})


def build_ingest_service(
    settings: Settings | None = None,
    *,
    s3_client: Any = None,
    s3vectors_client: Any = None,
    metrics: MetricsSink | None = None,
    embedder: Embedder | None = None,
    config: IngestConfig | None = None,
    logger: Logger | None = None,
    text_reader: Any = None,
) -> IngestService:
    """The ingest service: catalog bucket in, index deltas and error markers out."""
    settings = settings or load_settings()
    s3_client = boto3.client("s3") if s3_client is None else s3_client
    writer, views = index_backend(settings, s3_client, s3vectors_client)
    embedder = embedder or load_embedder(settings)
    seeder = None
    if settings.query_seed_items > 0 and settings.query_calibration:
        # the seed lives beside the query samples, in the index bucket, whatever the backend
        queries = writer.queries if isinstance(writer, IndexStore) else index_store(settings, s3_client).queries
        seeder = QuerySeeder(queries, embedder, items=settings.query_seed_items, metrics=metrics)
    service = IngestService(
        catalog=S3CatalogReader(s3_client),
        index=writer,
        embedder=embedder,
        views=views,
        errors=error_log(settings, s3_client),
        metrics=metrics,
        config=config or IngestConfig(catalog_bucket=settings.catalog_bucket, limits=image_limits(settings)),
        seeder=seeder,
        text_reader=text_reader if text_reader is not None else load_text_reader(settings),
    )
    share_logging(logger)
    return service


def load_profile_store(settings: Settings, dynamodb_client: Any) -> ProfileStore | None:
    """The shopper-profile store for personalised re-ranking, or None when this deployment keeps no profiles.

    Erasure through it also deletes the user's raw events when the events table is configured.
    """
    if not settings.profiles_table:
        return None
    from catalens.adapters.dynamodb import DynamoProfileStore

    return DynamoProfileStore(dynamodb_client, settings.profiles_table, events_table=settings.events_table or None)


def build_search_service(
    settings: Settings | None = None,
    *,
    s3_client: Any = None,
    dynamodb_client: Any = None,
    s3vectors_client: Any = None,
    embedder: Embedder | None = None,
    metrics: MetricsSink | None = None,
    background_loads: bool = True,
) -> SearchService:
    """The search service over the S3 index, personalised when the deployment keeps profiles (``PROFILES_TABLE``).

    Photo queries are calibrated with the index's query domain (``QUERY_CALIBRATION``), and a share of their
    embeddings (``QUERY_SAMPLE_RATE``) is written back to the index store for the builder to fit that domain on.
    """
    from catalens.ranking import rerank

    settings = settings or load_settings()
    profiles = load_profile_store(settings, boto3.client("dynamodb") if dynamodb_client is None else dynamodb_client)
    s3_client = boto3.client("s3") if s3_client is None else s3_client
    store = index_store(settings, s3_client)
    _, views = index_backend(
        settings, s3_client, s3vectors_client, background_loads=background_loads, calibrate=settings.query_calibration
    )
    samples = None
    if settings.query_sample_rate > 0:
        samples = QuerySampler(store.queries, rate=settings.query_sample_rate, metrics=metrics)
    return SearchService(
        embedder=embedder or load_embedder(settings),
        views=views,
        limits=query_image_limits(settings),
        profiles=profiles,
        rerank=rerank,
        metrics=metrics,
        calibration=settings.query_calibration,
        main_subject=settings.main_subject,
        query_samples=samples,
        text_reader=lambda: load_text_reader(settings),
        read_query_text=settings.query_read_text,
    )


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


def build_search_api(
    service: SearchService,
    settings: Settings | None = None,
    *,
    ssm_client: Any = None,
    logger: Logger,
    metrics: MetricsSink | None = None,
) -> RestResolver:
    """The search API over ``service``: its routes, with the shopper auth of this deployment and its error handlers."""
    settings = settings or load_settings()
    shoppers = load_shopper_auth(settings, boto3.client("ssm") if ssm_client is None else ssm_client)
    app = search_api(service, shoppers, logger=logger, metrics=metrics)
    share_logging(logger)
    return app


def build_profile_stream(
    settings: Settings | None = None,
    *,
    dynamodb_client: Any = None,
    s3_client: Any = None,
    s3vectors_client: Any = None,
    metrics: MetricsSink | None = None,
    logger: Logger | None = None,
) -> ProfileStream:
    """The profile function's service: stream records in, profiles (and co-occurrence counts) out.

    Looked-up item vectors come from the current index view (revalidated every few seconds, so new items are
    found), named by the view's index space.
    """
    from catalens.adapters.dynamodb import DynamoCooccurrenceStore, DynamoProfileStore

    settings = settings or load_settings()
    dynamodb = boto3.client("dynamodb") if dynamodb_client is None else dynamodb_client
    s3_client = boto3.client("s3") if s3_client is None else s3_client
    # profiles store item vectors: never the approximate ones a first stage answers with
    _, views = index_backend(settings, s3_client, s3vectors_client, background_loads=True, staged=False)
    cooccurrence = None
    if settings.cooccurrence_table:
        cooccurrence = DynamoCooccurrenceStore(dynamodb, settings.cooccurrence_table)
    updater = ProfileUpdater(
        store=DynamoProfileStore(dynamodb, settings.profiles_table, cooccurrence_table=settings.cooccurrence_table),
        lookup=index_lookup(views),
        cooccurrence=cooccurrence,
        space=lambda: views().index_space,
    )
    stream = ProfileStream(updater, metrics=metrics, annotate=logger.append_keys if logger is not None else None)
    share_logging(logger)
    return stream


def build_index_builder(
    settings: Settings | None = None,
    *,
    s3_client: Any = None,
    s3vectors_client: Any = None,
    metrics: MetricsSink | None = None,
    logger: Logger | None = None,
) -> IndexBuilder:
    """The builder function's service over the S3 index; under S3 Vectors it only refreshes the query domain (and
    recounts the index's stats when forced): S3 Vectors builds its own index."""
    settings = settings or load_settings()
    s3_client = boto3.client("s3") if s3_client is None else s3_client
    store = index_store(settings, s3_client)
    vectors = None
    if settings.index_backend == "s3vectors":
        vectors = vector_index(settings, s3_client, s3vectors_client)
    builder = IndexBuilder(store, gc_grace_seconds=settings.gc_grace_seconds, metrics=metrics, vectors=vectors)
    share_logging(logger)
    return builder
