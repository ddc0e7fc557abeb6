"""The search service: what ``POST /search``, ``GET /items/{id}[/similar]`` and ``GET /health`` answer.

Per request the work is decode + embed (photo queries only) + search + calibrate (photo queries, when the
index has a query domain) + rank. Everything heavier is done once: the embedder is created when the service is
(one onnxruntime session per process), and the index view comes from a cache that revalidates the manifest now
and then (:class:`~catalens.index.cache.IndexCache`).

Query-domain calibration (:mod:`catalens.query_domain`) re-scores a photo query's first-stage candidates: shoppers'
photos and shop photos are centred on their own domains and "hub" items pay for looking like every shopper photo.
Candidates are re-ordered within consecutive blocks of ``CALIBRATION_POOL`` raw neighbours, so the order of a
block never depends on how deep the client pages: every page is a slice of one ranking. "More like this" (item
queries) compares two shop photos and stays plain cosine; so does a photo query that is a copy of a catalog photo
(plain cosine ≥ the model card's ``copy_cosine`` to its best candidate: the answer's ``query.catalog_copy`` names that
item), and such a query is not sampled for the domain.

Example
-------
>>> service = SearchService(embedder=embedder, views=cache.view)          # doctest: +SKIP
>>> service.search(SearchRequest(image=jpeg_bytes)).hits[0].item_id        # doctest: +SKIP
'sku-123'
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from catalens.category import (
    CALIBRATED_TEMPERATURE,
    CATEGORY_FIELD,
    NEIGHBOURS,
    PLAIN_TEMPERATURE,
    CategoryGuess,
    category_of,
    predict_category,
)
from catalens.errors import memory_error_as_image_error
from catalens.groups import WINDOW_SIDES, candidate_windows, select_groups
from catalens.imaging import (
    ImageLimits,
    PreparedQuery,
    Region,
    decode_image,
    load_region_and_preprocess,
    load_windows_and_preprocess,
)
from catalens.index.filters import Filter
from catalens.index.records import Hit
from catalens.ports import Embedder, IndexReader, MetricsSink, ProfileStore, TextReader
from catalens.query_domain import CALIBRATION_POOL, QueryDomain, is_catalog_copy
from catalens.ranking import first_stage_k
from catalens.service.errors import ItemNotFoundError, PageTooDeepError, RequestError, UnknownFilterError
from catalens.service.fields import STANDARD_FIELDS
from catalens.service.requests import REGION_AUTO, Filters, SearchOptions, SearchRequest
from catalens.service.sampling import QuerySampler
from catalens.service.telemetry import NullMetrics
from catalens.subject import main_subject_box
from catalens.text.fusion import DEFAULT_FUSION, FusionParams, fuse
from catalens.text.lexical import rescale

log = logging.getLogger(__name__)


Reranker = Callable[..., list[Hit]]

# A photo or item query with words re-ranks at least this many visual candidates by them (catalens.text.fusion).
FUSION_POOL = 100
READ_TEXT_SHORT_SIDE = 736  # a query photo read for its text decodes no smaller (catalens.ocr.DetectParams)


@dataclass
class Timings:
    """Milliseconds spent per stage of one request; reported in the body and in ``Server-Timing``."""

    decode: float = 0.0  # decode + preprocess, main-subject detection included
    locate: float = 0.0  # of which finding the main subject
    embed: float = 0.0
    search: float = 0.0
    calibrate: float = 0.0
    rank: float = 0.0
    profile: float = 0.0
    groups: float = 0.0  # groups=N: finding and searching the product regions
    text: float = 0.0  # words: the text search, or scoring the visual candidates' words and fusing
    read: float = 0.0  # read_text: decoding the query photo again and reading its text (OCR)
    total: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in vars(self).items()}

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value (durations in ms)."""
        return ", ".join(f"{name};dur={value:.2f}" for name, value in self.to_dict().items())


@dataclass
class SearchResponse:
    """Hits of one page, with the index version that answered and where the time went."""

    hits: list[Hit]
    index_version: str
    timings: Timings
    k: int
    offset: int
    item_count: int
    personalized: bool = False
    calibrated: bool = False
    explain: bool = False
    query: dict[str, Any] = field(default_factory=dict)
    index_stage: str = "full"
    category: dict[str, Any] | None = None  # the predicted category, shown in photo answers (null: no guess)
    groups: list[dict[str, Any]] | None = None  # groups=N: one result list per product region found

    def to_dict(self) -> dict[str, Any]:
        photo = {"category": self.category} if self.query.get("type") == "image" else {}
        if self.groups is not None:
            photo["groups"] = self.groups
        return photo | {
            "hits": [hit_to_dict(hit, explain=self.explain) for hit in self.hits],
            "k": self.k,
            "offset": self.offset,
            "index_version": self.index_version,
            "index": {"version": self.index_version, "stage": self.index_stage},
            "item_count": self.item_count,
            "personalized": self.personalized,
            "calibrated": self.calibrated,
            "query": self.query,
            "timings_ms": self.timings.to_dict(),
        }


def hit_to_dict(hit: Hit, *, explain: bool) -> dict[str, Any]:
    """A hit as the API shows it (the vector stays inside)."""
    out: dict[str, Any] = {
        "item_id": hit.item_id,
        "score": _finite(hit.score),
        "image_key": hit.image_key,
        "fields": dict(hit.fields),
    }
    if explain:
        out["explain"] = {name: _finite(value) for name, value in (hit.explain or {"visual": hit.score}).items()}
    return out


def _finite(value: float) -> float:
    number = float(value)
    return round(number, 6) if math.isfinite(number) else 0.0


class SearchService:
    """Answers searches against the current index version.

    Parameters
    ----------
    embedder
        The process's embedder (created once, at init).
    views
        Returns the current index view; normally ``IndexCache.view`` (cheap: revalidates now and then).
    limits
        Image safety limits for query photos.
    profiles
        Profile store for personalisation; None turns personalisation off.
    rerank
        ``catalens.ranking.rerank``-compatible function; None returns visual order.
    rank_params
        Passed to ``rerank`` as ``params``.
    wall_clock_ms
        Epoch milliseconds, passed to ``rerank`` as ``now_ms`` so an idle shopper's confidence fades (tests fix it).
    metrics
        Per answered search, one group by ``kind`` (``photo`` or ``item``): ``Searches``, ``SearchHits`` (hits
        returned), ``SearchMs`` (service time).
    calibration
        Re-score photo queries with the view's query domain when it has one (``Settings.query_calibration``);
        a request can still ask for plain cosine with ``calibrate=false``.
    query_samples
        Keeps a random share of photo query embeddings (in the background) for the builder to fit the query
        domain on; None keeps none.
    main_subject
        Photo queries without a region search their main subject (:mod:`catalens.subject`) when one stands apart
        (``Settings.main_subject``); ``region=auto`` asks for it anyway, ``region=full`` not.
    fusion
        How a photo or item query's words (``q``) re-rank its visual candidates (:mod:`catalens.text.fusion`).
    text_reader, read_query_text
        Makes the OCR reader for query photos (:mod:`catalens.ocr`; called once, when a query first asks, so a
        cold start that reads no text does not load it), and whether a photo query reads its own text by default
        (``Settings.query_read_text``); a request can ask with ``read_text``. The text read is fused like ``q``.
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        views: Callable[[], IndexReader],
        limits: ImageLimits | None = None,
        profiles: ProfileStore | None = None,
        rerank: Reranker | None = None,
        rank_params: Any = None,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        calibration: bool = True,
        query_samples: QuerySampler | None = None,
        main_subject: bool = False,
        fusion: FusionParams = DEFAULT_FUSION,
        text_reader: Callable[[], TextReader | None] | None = None,
        read_query_text: bool = False,
    ) -> None:
        self.fusion = fusion
        self._make_text_reader = text_reader
        self._text_reader: TextReader | None = None
        self.read_query_text = read_query_text
        self.embedder = embedder
        self._views = views
        self.limits = limits or ImageLimits()
        self.profiles = profiles
        self._rerank = rerank
        self._rank_kwargs = {} if rank_params is None else {"params": rank_params}
        self._fields_by_version: dict[str, frozenset[str]] = {}
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._checked_fingerprints: set[str] = set()
        self.metrics = metrics or NullMetrics()
        self.calibration = calibration
        self.query_samples = query_samples
        self.main_subject = main_subject
        self._model_fingerprint: str | None = None

    # ------------------------------------------------------------------------------------------------ queries

    def search(self, request: SearchRequest) -> SearchResponse:
        """Search by photo or by an indexed item's vector."""
        started = self._clock()
        timings = Timings()
        view = self._view()
        options = request.options
        self._check_filters(options.filters, view)
        profile_read = self._start_profile_read(options)  # its network time overlaps decode + embed
        if request.image is None and request.item_id is None:
            assert request.text is not None
            return self._search_words(view, request.text, options, timings, started, profile_read)
        exclude: set[str] = set()
        domain: QueryDomain | None = None
        if request.image is not None:
            prepared, source = self._prepare_query(request.image, request.region, timings)
            vector = self._embed_query(prepared, len(request.image), timings)
            query: dict[str, Any] = {"type": "image", "bytes": len(request.image), "region": prepared.describe(source)}
            if self.calibration and options.calibrate:
                domain = view.query_domain  # in index space: the view projects the stored reference
        else:
            assert request.item_id is not None
            vector = self._vector_of(view, request.item_id)
            exclude.add(request.item_id)
            query = {"type": "item", "item_id": request.item_id}
        auto_category = None
        if request.item_id is not None and options.category_auto:  # more like this: the item's own category
            record = view.get(request.item_id)
            auto_category = category_of(record.fields) if record is not None else None
        words = request.text
        if request.text is not None:
            query["q"] = request.text
        if request.image is not None and (request.read_text or (request.read_text is None and self.read_query_text)):
            read = self._read_query_text(request.image, timings)
            query["read_text"] = read
            words = " ".join(part for part in (words, read) if part) or None
        response = self._answer(
            view, vector, options, exclude, timings, started, query, profile_read, domain, auto_category, words
        )
        if request.image is not None and request.groups:
            t0 = self._clock()
            response.groups = self._groups(view, request.image, request.groups, options, domain)
            timings.groups = (self._clock() - t0) * 1000
            timings.total = (self._clock() - started) * 1000
        if request.image is not None and "catalog_copy" not in response.query:
            self._offer_sample(vector)  # a copy of a shop photo is not a shopper's photo: it would skew the domain
        outcome = {
            "Searches": (1, "Count"),
            "SearchHits": (len(response.hits), "Count"),
            "SearchMs": (timings.total, "Milliseconds"),
        }
        self.metrics.emit_group(outcome, {"kind": "photo" if request.image is not None else "item"})
        return response

    def _read_query_text(self, image: bytes, timings: Timings) -> str:
        """The text printed on the query photo (OCR, :mod:`catalens.ocr`); "" when it shows none."""
        t0 = self._clock()
        if self._text_reader is None and self._make_text_reader is not None:
            self._text_reader = self._make_text_reader()
            self._make_text_reader = None
        if self._text_reader is None:
            message = "this deployment reads no text on query photos (READ_TEXT off or no OCR models)"
            raise RequestError(message, code="read_text_unavailable")
        with memory_error_as_image_error(len(image)):
            decoded = decode_image(image, target_short_side=READ_TEXT_SHORT_SIDE, limits=self.limits)
            text = self._text_reader.read_text(decoded)
        timings.read = (self._clock() - t0) * 1000
        return text

    def _search_words(
        self,
        view: IndexReader,
        text: str,
        options: SearchOptions,
        timings: Timings,
        started: float,
        profile_read: Future[Any] | None,
    ) -> SearchResponse:
        """A text query: items ranked by BM25 over their words, then filtered, paged and personalised like a photo.

        Scores are BM25 as a fraction of the best hit's (the first scores 1), the scale the personal boost is
        bounded on; ``explain`` keeps the BM25 score as ``text``.
        """
        if options.category_auto:
            raise RequestError("category=auto needs a photo or an item_id to predict from", code="invalid_filter")
        window = options.offset + options.k
        profile = self._profile(profile_read, timings)
        pool = first_stage_k(options.k, options.offset) if profile is not None else window
        t0 = self._clock()
        # vectors only where a profile's preference vector will meet them (decoding compact rows costs ~1 ms)
        found = view.search_text(text, pool, filters=to_index_filter(options.filters), vectors=profile is not None)
        shares = rescale(np.array([hit.score for hit in found], dtype=np.float32)).tolist()
        hits = []
        for hit, share in zip(found, shares, strict=True):
            details = {"text": hit.score, "text_share": share} if options.explain else hit.explain
            hits.append(replace(hit, score=share, explain=details))
        timings.text = (self._clock() - t0) * 1000
        t1 = self._clock()
        personalized = False
        if self._rerank is not None and (profile is not None or options.explain):
            now_ms, space = self._wall_clock_ms(), view.index_space
            hits = self._rerank(hits, profile, now_ms=now_ms, space=space, limit=window, **self._rank_kwargs)
            personalized = any("boost" in hit.explain for hit in hits)
            if options.explain:  # the re-ranker names the first-stage score "visual": here it is the text share
                bm25 = {hit.item_id: hit.score for hit in found}
                hits = [replace(hit, explain={**hit.explain, "text": bm25[hit.item_id]}) for hit in hits]
        timings.rank = (self._clock() - t1) * 1000
        timings.total = (self._clock() - started) * 1000
        self.metrics.emit_group(
            {"Searches": (1, "Count"), "SearchHits": (len(hits[options.offset : window]), "Count"),
             "SearchMs": (timings.total, "Milliseconds")},
            {"kind": "text"},
        )  # fmt: skip
        return SearchResponse(
            hits=hits[options.offset : window],
            index_version=view.version,
            timings=timings,
            k=options.k,
            offset=options.offset,
            item_count=len(view),
            personalized=personalized,
            explain=options.explain,
            query={"type": "text", "q": text},
            index_stage=view.stage,
        )

    def _groups(
        self, view: IndexReader, image: bytes, groups: int, options: SearchOptions, domain: QueryDomain | None
    ) -> list[dict[str, Any]]:
        """Up to ``groups`` distinct products in the photo, each with its box, its hits and its category.

        Windows tile the photo (:func:`catalens.groups.candidate_windows`); each is embedded, and the windows whose
        best catalog match is strongest, and not the same product or place as a better one, are searched in full.
        """
        with memory_error_as_image_error(len(image)):
            windows, _ = load_windows_and_preprocess(
                image, self.embedder.card.preprocess, self.limits, candidate_windows, min(WINDOW_SIDES)
            )
            vectors = self.embedder.embed(np.stack([window.tensor for window in windows]))
        best = [view.search(vector, 1, vectors=False) for vector in vectors]
        scores = [hits[0].score if hits else -1.0 for hits in best]
        items = [hits[0].item_id if hits else None for hits in best]
        chosen = select_groups([window.box for window in windows], scores, items, groups)
        found = []
        for index in chosen:
            query = {"type": "image", "region": windows[index].describe("group")}
            answer = self._answer(view, vectors[index], options, set(), Timings(), self._clock(), query, None, domain)
            found.append(
                {
                    "region": answer.query["region"],
                    "score": _finite(scores[index]),
                    "category": answer.category,
                    "calibrated": answer.calibrated,
                    "hits": [hit_to_dict(hit, explain=options.explain) for hit in answer.hits],
                }
            )
        return found

    def similar(self, item_id: str, options: SearchOptions) -> SearchResponse:
        """Items that look like an indexed item (the item itself left out)."""
        return self.search(SearchRequest(item_id=item_id, options=options))

    def get_item(self, item_id: str) -> dict[str, Any]:
        """One item's current state: fields, image key, source ETag, near-duplicates found at ingest."""
        view = self._view()
        record = view.get(item_id)
        if record is None or record.deleted:
            raise ItemNotFoundError(f"no item {item_id!r} in index version {view.version}")
        fields = dict(record.fields)
        return {
            "item_id": item_id,
            "fields": fields,
            "image_key": record.image_key,
            "source_etag": record.source_etag,
            "updated_at": record.updated_at,
            "near_duplicates": fields.get("near_duplicates", []),
            "index_version": view.version,
        }

    def health(self) -> dict[str, Any]:
        """Liveness plus what a deployer checks first: index version, item count, model."""
        view = self._view()
        card = self.embedder.card
        return {
            "status": "ok",
            "index_version": view.version,
            "index": {"version": view.version, "stage": view.stage, "words": getattr(view, "words", None)},
            "item_count": len(view),
            "model": {"name": card.name, "fingerprint": card.fingerprint()},
            "personalization": self.profiles is not None,
        }

    def forget_user(self, user_id: str) -> dict[str, Any]:
        """Erase a user's profile (privacy); personalisation stops until new events arrive. Idempotent.

        A deployment without a profile store keeps nothing to erase, so it answers ``deleted: false``.
        """
        if self.profiles is None:
            return {"user_id": user_id, "deleted": False}
        erased = self.profiles.delete(user_id)
        return {"user_id": user_id, "deleted": True if erased is None else bool(erased)}

    # ------------------------------------------------------------------------------------------------ stages

    def _view(self) -> IndexReader:
        view = self._views()
        fingerprint = view.model_fingerprint
        if fingerprint and fingerprint not in self._checked_fingerprints:
            self.embedder.card.check_matches(fingerprint)  # ModelError(model_mismatch) -> 503: deployment inconsistent
            self._checked_fingerprints.add(fingerprint)
        return view

    def _prepare_query(self, image: bytes, region: Region | str | None, timings: Timings) -> tuple[PreparedQuery, str]:
        """Decode and preprocess the photo, the region of it the request names or its main subject; says where the
        box came from (``request``, ``subject`` or ``full``)."""
        t0 = self._clock()
        box = region if isinstance(region, Region) else None
        wants_subject = region == REGION_AUTO or (region is None and self.main_subject)
        spent: list[float] = []

        def locate(decoded: Any) -> tuple[int, int, int, int] | None:
            started = self._clock()
            try:
                return main_subject_box(decoded)
            finally:
                spent.append(self._clock() - started)

        with memory_error_as_image_error(len(image)):
            prepared = load_region_and_preprocess(
                image, self.embedder.card.preprocess, self.limits, box, locate=locate if wants_subject else None
            )
        timings.decode = (self._clock() - t0) * 1000
        timings.locate = sum(spent) * 1000
        if box is not None:
            return prepared, "request"
        return prepared, "subject" if prepared.located else "full"

    def _embed_query(self, prepared: PreparedQuery, nbytes: int, timings: Timings) -> np.ndarray:
        t0 = self._clock()
        with memory_error_as_image_error(nbytes):
            vector = self.embedder.embed(prepared.tensor[np.newaxis])[0]
        timings.embed = (self._clock() - t0) * 1000
        return vector

    @staticmethod
    def _vector_of(view: IndexReader, item_id: str) -> np.ndarray:
        vector = view.vector_of(item_id)
        if vector is None:
            raise ItemNotFoundError(f"no item {item_id!r} in index version {view.version}")
        return vector

    def _check_filters(self, filters: Filters, view: IndexReader) -> None:
        if not filters:
            return
        known = self._known_fields(view)
        unknown = sorted(filters.field_names() - known)
        if unknown:
            raise UnknownFilterError(
                f"unknown filter field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )

    def _known_fields(self, view: IndexReader) -> frozenset[str]:
        """Fields a filter may name: the standard product fields plus every field the index holds, fresh items'
        included (cached per index version)."""
        known = self._fields_by_version.get(view.version)
        if known is None:
            known = STANDARD_FIELDS | view.field_names()
            self._fields_by_version = {view.version: known}
        return known

    def _answer(
        self,
        view: IndexReader,
        vector: np.ndarray,
        options: SearchOptions,
        exclude: set[str],
        timings: Timings,
        started: float,
        query: dict[str, Any],
        profile_read: Future[Any] | None = None,
        domain: QueryDomain | None = None,
        auto_category: str | None = None,
        words: str | None = None,
    ) -> SearchResponse:
        window = options.offset + options.k
        cap = view.max_candidates
        if cap is not None and window > cap:
            raise PageTooDeepError(
                f"offset + k is {window}; this index answers the first {cap} results only (offset + k <= {cap})"
            )
        profile = self._profile(profile_read, timings)
        pool = first_stage_k(options.k, options.offset) if profile is not None else window
        reranks = self._rerank is not None and (profile is not None or options.explain)
        photo = query.get("type") == "image"
        filters = options.filters
        guess: CategoryGuess | None = None
        guessed = False
        if photo and (filters or options.category_auto):
            # the guess says what the photo shows, whatever the shopper filters for: the unfiltered neighbours vote
            neighbours, plain_or_calibrated, _ = self._ranked(view, vector, NEIGHBOURS, None, exclude, domain, timings)
            guess, guessed = self._guess(neighbours, plain_or_calibrated), True
            auto_category = guess.name if guess is not None else None
        if options.category_auto:
            query = {**query, "category_filter": auto_category}
            if auto_category is not None:
                filters = replace(filters, equals={**filters.equals, CATEGORY_FIELD: (auto_category,)})
        if photo:
            pool = max(pool, NEIGHBOURS)
        if words is not None:
            pool = max(pool, FUSION_POOL)
        hits, calibrated, query = self._ranked(
            view, vector, pool, filters, exclude, domain, timings, explain=options.explain, query=query, vectors=reranks
        )
        if photo and not guessed:
            guess = self._guess(hits, calibrated)
        if words is not None and hits:
            t0 = self._clock()
            text = view.text_scores(words, [hit.item_id for hit in hits])
            hits = fuse(hits, np.array([hit.score for hit in hits]), text, self.fusion, explain=options.explain)
            query = {**query, "fusion": self.fusion.method}
            timings.text = (self._clock() - t0) * 1000
        t1 = self._clock()
        personalized = False
        if reranks:
            now_ms, space = self._wall_clock_ms(), view.index_space
            fused = {hit.item_id: hit.explain for hit in hits} if words is not None and options.explain else None
            hits = self._rerank(hits, profile, now_ms=now_ms, space=space, limit=window, **self._rank_kwargs)
            personalized = any("boost" in hit.explain for hit in hits)
            if fused is not None:  # the re-ranker calls its input score "visual": here that is the fused one
                hits = [replace(hit, explain={**hit.explain, **fused[hit.item_id]}) for hit in hits]
        timings.rank = (self._clock() - t1) * 1000
        timings.total = (self._clock() - started) * 1000
        return SearchResponse(
            hits=hits[options.offset : window],
            index_version=view.version,
            timings=timings,
            k=options.k,
            offset=options.offset,
            item_count=len(view),
            personalized=personalized,
            calibrated=calibrated,
            explain=options.explain,
            query=query,
            index_stage=view.stage,
            category=guess.to_dict() if guess is not None else None,
        )

    def _ranked(
        self,
        view: IndexReader,
        vector: np.ndarray,
        pool: int,
        filters: Filters,
        exclude: set[str],
        domain: QueryDomain | None,
        timings: Timings,
        *,
        explain: bool = False,
        query: dict[str, Any] | None = None,
        vectors: bool = False,
    ) -> tuple[list[Hit], bool, dict[str, Any]]:
        """The first ``pool`` hits (calibrated when ``domain`` applies), whether they are, and the query description
        (a photo that copies a catalog photo is named there and ranked by plain cosine). Adds to the timings.
        ``vectors``: the hits must carry their vectors (the re-ranker reads them); calibration does without."""
        query = query if query is not None else {"type": "image"}
        if domain is not None:
            pool = calibration_pool(pool)
        cap = view.max_candidates
        if cap is not None:
            pool = min(pool, cap)  # a smaller pool to re-rank or calibrate, never a shorter page
        t0 = self._clock()
        hits = view.search(vector, pool, filters=to_index_filter(filters), exclude=exclude, vectors=vectors)
        t1 = self._clock()
        timings.search += (t1 - t0) * 1000
        calibrated = False
        if query.get("type") == "image" and hits and is_catalog_copy(hits[0].score, self.embedder.card.copy_cosine):
            query = {**query, "catalog_copy": hits[0].item_id}
            domain = None  # the photo is in the catalog's domain already: plain cosine ranks its own item first
        if domain is not None:
            recalibrated = calibrate_hits(view, domain, vector, hits, explain=explain)
            if recalibrated is not None:
                hits, calibrated = recalibrated, True
            timings.calibrate += (self._clock() - t1) * 1000
        return hits, calibrated, query

    @staticmethod
    def _guess(hits: Sequence[Hit], calibrated: bool) -> CategoryGuess | None:
        """The category the best hits vote for, with the temperature fitted for their kind of score."""
        temperature = CALIBRATED_TEMPERATURE if calibrated else PLAIN_TEMPERATURE
        top = hits[:NEIGHBOURS]
        return predict_category(
            [hit.score for hit in top], [category_of(hit.fields) for hit in top], temperature=temperature
        )

    def _offer_sample(self, vector: np.ndarray) -> None:
        """Maybe keep this photo query's embedding for the query domain (background; never fails the search)."""
        if self.query_samples is None:
            return
        if self._model_fingerprint is None:
            self._model_fingerprint = self.embedder.card.fingerprint()
        self.query_samples.offer(vector, model_fingerprint=self._model_fingerprint)

    def _start_profile_read(self, options: SearchOptions) -> Future[Any] | None:
        """Start reading the shopper's profile (None when this request is not personalised)."""
        if options.user_id is None or not options.personalize or self.profiles is None or self._rerank is None:
            return None
        return self.profiles.get_async(options.user_id)

    def _profile(self, profile_read: Future[Any] | None, timings: Timings) -> Any:
        """The profile read's result; ``timings.profile`` is the time spent waiting for it (not the whole read)."""
        if profile_read is None:
            return None
        t0 = self._clock()
        try:
            return profile_read.result()
        finally:
            timings.profile = (self._clock() - t0) * 1000


def calibration_pool(pool: int) -> int:
    """How many raw candidates a calibrated search re-scores: whole blocks of ``CALIBRATION_POOL`` covering ``pool``."""
    return CALIBRATION_POOL * max(1, math.ceil(pool / CALIBRATION_POOL))


def calibrate_hits(
    view: IndexReader, domain: QueryDomain, query: np.ndarray, hits: list[Hit], *, explain: bool = False
) -> list[Hit] | None:
    """``hits`` (raw cosine order) re-scored with ``domain`` and re-ordered within blocks of ``CALIBRATION_POOL``.

    Each hit's ``score`` becomes the calibrated score; with ``explain`` its ``explain`` gains ``raw`` (the plain
    cosine), ``centred`` and ``hubness``. Hits without their vector are calibrated from the dot products the index
    gives (:meth:`IndexReader.calibration_terms`). Returns None (serve plain cosine) when calibration cannot apply:
    no catalog mean, a candidate the index has neither terms nor a vector for, dimensions that do not match.
    """
    catalog_mean = view.catalog_mean
    if catalog_mean is None or not hits:
        return None
    try:
        in_index_space = view.project(query)
        terms = None
        if any(hit.vector is None for hit in hits):
            # from the index's codes: a compact index would otherwise rebuild 50 vectors of the full dimension
            terms = view.calibration_terms([hit.item_id for hit in hits], domain)
        if terms is not None:
            raw = np.array([hit.score for hit in hits], dtype=np.float32)
            calibrated, centred, hubness = domain.calibrate_terms(in_index_space, raw, *terms, catalog_mean)
        else:
            vectors = _candidate_vectors(view, hits)
            if vectors is None:
                return None
            calibrated, centred, hubness = domain.calibrate(in_index_space, vectors, catalog_mean)
    except ValueError:
        log.warning("query domain does not fit this index; searching uncalibrated", exc_info=True)
        return None
    if not np.isfinite(calibrated).all():
        return None
    positions = np.arange(len(hits))
    order = np.lexsort((positions, -calibrated, positions // CALIBRATION_POOL)).tolist()
    scores, centred_values, hubness_values = calibrated.tolist(), centred.tolist(), hubness.tolist()
    ranked = []
    for index in order:
        hit = hits[index]
        score = scores[index]
        details = hit.explain
        if explain:
            parts = {"raw": hit.score, "centred": centred_values[index], "hubness": hubness_values[index]}
            details = {**hit.explain, "visual": score, **parts}
        ranked.append(type(hit)(hit.item_id, score, hit.fields, hit.image_key, hit.vector, details))
    return ranked


def _candidate_vectors(view: IndexReader, hits: Sequence[Hit]) -> np.ndarray | None:
    """One index-space row per hit: the vector the hit carries, else the view's (None when one has neither)."""
    rows = []
    for hit in hits:
        vector = hit.vector if hit.vector is not None else view.vector_of(hit.item_id)
        if vector is None:
            return None
        rows.append(vector)
    try:
        matrix = np.asarray(rows, dtype=np.float32)
    except ValueError:  # ragged rows
        return None
    return matrix if matrix.ndim == 2 else None


def to_index_filter(filters: Filters) -> Filter | None:
    """The index's :class:`~catalens.index.filters.Filter` for the request's filters (None when there are none).

    Query strings carry only text, so a value like ``"42"`` or ``"true"`` also matches the number or
    boolean it spells (``filter.size=42`` finds ``{"size": 42}``).
    """
    if not filters:
        return None
    result = Filter()
    for name, values in filters.equals.items():
        result &= Filter.one_of(name, _with_typed_twins(values))
    if filters.price_min is not None or filters.price_max is not None:
        result &= Filter.between("price", filters.price_min, filters.price_max)
    return result


def _with_typed_twins(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        out.append(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("true", "false"):
                out.append(text == "true")
                continue
            try:
                number = float(text)
            except ValueError:
                continue
            if math.isfinite(number):
                out.append(int(number) if number.is_integer() else number)
    return out
