"""Parallel uploads of catalog photos to S3 (real AWS or the local emulator), with a progress bar on stderr.

Each photo goes as one PUT with its fields as user metadata, so ingest never sees a photo before its fields. Fields
that cannot be metadata (nested values, more than S3's 2 KB) go as a sidecar object ``<key>.json`` written *before*
the photo, for the same reason.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TextIO

from catalens_tools.local.catalog import CatalogPhoto, metadata_for


@dataclass
class UploadResult:
    uploaded: list[str] = field(default_factory=list)  # S3 keys
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "uploaded": len(self.uploaded),
            "failed": len(self.failed),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "photos_per_second": round(len(self.uploaded) / self.seconds, 2) if self.seconds else None,
        }


class ProgressBar:
    """A one-line progress bar on a TTY; on a pipe, one line every few seconds and a last one at the end."""

    def __init__(self, total: int, total_bytes: int, *, stream: TextIO | None = None, label: str = "uploading") -> None:
        self.total = total
        self.total_bytes = total_bytes
        self.stream = stream or sys.stderr
        self.label = label
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._lock = threading.Lock()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def advance(self, nbytes: int, *, failed: bool = False) -> None:
        with self._lock:
            self.done += 1
            self.failed += int(failed)
            self.bytes += nbytes
            now = time.monotonic()
            if self._tty or now - self._last_line >= 2.0:
                self._last_line = now
                self._draw(final=False)

    def close(self) -> None:
        with self._lock:
            self._draw(final=True)

    def _draw(self, *, final: bool) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        width = 28
        filled = int(width * self.done / self.total) if self.total else width
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} photos  "
            f"{self.bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB  {rate:.1f}/s"
            + (f"  {self.failed} failed" if self.failed else "")
            + ("" if final else f"  ETA {eta:.0f}s")
        )
        if self._tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def normalise_prefix(prefix: str) -> str:
    """``catalog`` and ``catalog/`` both mean the folder ``catalog/``; empty means the bucket's root."""
    prefix = prefix.strip().lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def upload_photo(s3: Any, bucket: str, prefix: str, photo: CatalogPhoto) -> str:
    """Upload one photo (and its sidecar first when the fields do not fit in metadata); return its key."""
    key = normalise_prefix(prefix) + photo.name
    metadata = metadata_for(photo.fields) if photo.fields else {}
    if metadata is None:
        sidecar = json.dumps(photo.fields, ensure_ascii=False).encode()
        s3.put_object(Bucket=bucket, Key=key + ".json", Body=sidecar, ContentType="application/json")
        metadata = {}
    s3.put_object(
        Bucket=bucket, Key=key, Body=photo.path.read_bytes(), ContentType=photo.content_type, Metadata=metadata
    )
    return key


def upload_catalog(
    s3: Any,
    bucket: str,
    prefix: str,
    photos: list[CatalogPhoto],
    *,
    workers: int = 8,
    progress: ProgressBar | None = None,
) -> UploadResult:
    """Upload ``photos`` with ``workers`` threads (boto3 clients are thread-safe); failures are collected."""
    result = UploadResult()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="upload") as pool:
        futures = {pool.submit(upload_photo, s3, bucket, prefix, photo): photo for photo in photos}
        for future in as_completed(futures):
            photo = futures[future]
            try:
                key = future.result()
            except Exception as exc:
                result.failed.append((str(photo.path), _reason(exc)))
                if progress:
                    progress.advance(0, failed=True)
                continue
            result.uploaded.append(key)
            size = photo.size
            result.bytes += size
            if progress:
                progress.advance(size)
    result.seconds = time.monotonic() - started
    if progress:
        progress.close()
    return result


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
