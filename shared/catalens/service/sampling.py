"""Query sampling: keep a random share of photo query embeddings for query-domain calibration.

The index builder fits :class:`catalens.query_domain.QueryDomain` on recent query embeddings (stored by
:meth:`catalens.index.query_domain_store.QueryDomainStore.write_query_sample`; the builder refreshes the domain).
What is kept is the raw embedding alone — no user id, no photo, no request data — and only for photo queries.

Sampling must never cost a search anything: the write runs on one background thread, a failure is logged and
counted (``QuerySampleErrors``) but never raised, and when the writer falls behind further samples are dropped
rather than queued without bound.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for

import numpy as np

from catalens.ports import MetricsSink, QuerySampleSink
from catalens.service.telemetry import NullMetrics

log = logging.getLogger(__name__)

MAX_PENDING = 16  # writes in flight or queued; beyond this a sample is dropped (S3 slow or down)


class QuerySampler:
    """Offers each photo query's embedding to ``sink`` with probability ``rate``, off the request path.

    Parameters
    ----------
    sink
        Stores one sample (``QueryDomainStore.write_query_sample``).
    rate
        Probability in [0, 1] that a query is kept; 0 keeps nothing (and starts no thread).
    metrics
        ``QuerySampleErrors`` (by ``error``) for each failed write.
    draw
        Returns a float in [0, 1) per offer; a query is kept when it is below ``rate`` (tests fix it).
    """

    def __init__(
        self,
        sink: QuerySampleSink,
        *,
        rate: float,
        metrics: MetricsSink | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the query sample rate must be between 0 and 1, got {rate}")
        self.sink = sink
        self.rate = rate
        self.metrics = metrics or NullMetrics()
        self._draw = draw
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()

    def offer(self, vector: np.ndarray, *, model_fingerprint: str) -> bool:
        """Maybe keep ``vector`` (a query embedding); True when a write was started. Never raises."""
        try:
            if self.rate <= 0.0 or not model_fingerprint or self._draw() >= self.rate:
                return False
            sample = np.array(vector, dtype=np.float32, copy=True).reshape(-1)  # the caller's array may change
            with self._lock:
                if len(self._pending) >= MAX_PENDING:
                    log.warning("query sample dropped: %d sample writes still pending", len(self._pending))
                    return False
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-samples")
                future = self._executor.submit(self._write, sample, model_fingerprint)
                self._pending.add(future)
            future.add_done_callback(self._done)
            return True
        except Exception:  # sampling is best effort: a search must never fail because of it
            log.exception("query sample not started")
            return False

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every started write has finished (tests; a process shutting down)."""
        with self._lock:
            pending = list(self._pending)
        wait_for(pending, timeout=timeout)

    def close(self) -> None:
        """Finish started writes and stop the thread."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _write(self, sample: np.ndarray, model_fingerprint: str) -> None:
        try:
            self.sink.write_query_sample(sample, model_fingerprint=model_fingerprint)
        except Exception as exc:
            code = str(getattr(exc, "code", "") or type(exc).__name__)  # any exception: only ours carry a code
            log.warning("query sample not stored (%s): %s", code, exc, exc_info=True)
            try:
                self.metrics.emit("QuerySampleErrors", 1, "Count", {"error": code})
            except Exception:
                log.exception("QuerySampleErrors metric not recorded")

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
