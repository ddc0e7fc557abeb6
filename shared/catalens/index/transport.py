"""How a version's files travel between the blob store and memory: in parts, in parallel, verified as they arrive.

A file larger than ``part_size`` is stored as several objects ``<key>.part-00000``, ``<key>.part-00001``, … so no
object approaches S3's 5 GiB limit and each part is one ordinary PUT (no multipart upload to abort, no chunked
encoding a local emulator chokes on). The manifest entry of such a file lists its parts::

    {"sha256": <of the whole file>, "size": <bytes>, "parts": [{"sha256": ..., "size": ...}, ...]}

An entry without ``"parts"`` is one object at the file's own key: every version written before parts existed, and
every small file now (so the small files' bytes and keys are what they always were).

Writing (:func:`write_files`) uploads parts from memoryview slices of the file (no second copy of the snapshot), on
a thread pool (S3 latency, not CPU, is the limit), and copies an object server-side instead when the previous
version already holds the same bytes (same sha256): unchanged chunks of a compaction cost no upload.

Reading (:func:`fetch_files`) GETs every part in parallel straight into one preallocated buffer per file and
checks each part's sha256 in the thread that fetched it (hashlib releases the GIL), so verification overlaps the
download instead of following it. A file whose sha256 the caller already holds in memory (``reuse``) is not
fetched at all and its buffer is shared: that is how a version swap avoids doubling memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from catalens.index.errors import CorruptIndexError
from catalens.ports import BlobNotFoundError, BlobSizeError, BlobStore

PART_SIZE = 64 * 2**20
WRITE_BATCH_PARTS = 4  # a writer holds about this many parts' worth of files at a time (plus the largest file)
"""Files above this many bytes are stored in parts of this size (the last one shorter)."""
PART_SUFFIX = ".part-"

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Part:
    """One stored object of a file: where its bytes sit in the file and what they hash to."""

    index: int | None  # None: the file is one object at its own key
    offset: int
    size: int
    sha256: str

    def key(self, file_key: str) -> str:
        return file_key if self.index is None else f"{file_key}{PART_SUFFIX}{self.index:05d}"


@dataclass(frozen=True)
class TransferStats:
    """What writing a version cost: bytes and objects uploaded, and those copied inside the store instead."""

    bytes_uploaded: int = 0
    bytes_copied: int = 0
    objects_uploaded: int = 0
    objects_copied: int = 0


def split(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, size) of each part of a file of ``size`` bytes; one part when it fits (even when empty)."""
    if part_size < 1:
        raise ValueError(f"part_size must be positive, got {part_size}")
    if size <= part_size:
        return [(0, size)]
    return [(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


def parts_of(name: str, meta: Mapping[str, Any]) -> list[Part]:
    """The objects a manifest file entry names, checked for shape (a malformed entry is a corrupt index)."""
    try:
        size, sha = int(meta["size"]), str(meta["sha256"])
        raw = meta.get("parts")
        if raw is None:
            return [Part(None, 0, size, sha)]
        parts, offset = [], 0
        for index, part in enumerate(raw):
            part_size = int(part["size"])
            if part_size <= 0:
                raise ValueError(f"part {index} has size {part_size}")
            parts.append(Part(index, offset, part_size, str(part["sha256"])))
            offset += part_size
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptIndexError(f"file {name!r}: malformed manifest entry ({exc})") from exc
    if not parts or offset != size:
        raise CorruptIndexError(f"file {name!r}: parts add up to {offset} bytes, the entry says {size}")
    return parts


def objects_by_sha256(metas: Mapping[str, Mapping[str, Any]], key_of: Callable[[str], str]) -> dict[str, str]:
    """sha256 → key of every object a version's entry names: what a new version can copy instead of upload."""
    found: dict[str, str] = {}
    for name, meta in metas.items():
        try:
            parts = parts_of(name, meta)
        except CorruptIndexError:
            continue  # nothing to copy from a malformed entry; its readers refuse it anyway
        for part in parts:
            found.setdefault(part.sha256, part.key(key_of(name)))
    return found


def write_files(
    blob: BlobStore,
    files: Mapping[str, Buffer],
    key_of: Callable[[str], str],
    *,
    part_size: int = PART_SIZE,
    previous: Mapping[str, str] | None = None,
    workers: int = 16,
) -> tuple[dict[str, dict[str, Any]], TransferStats]:
    """Store every file (in parts above ``part_size``) under fresh keys; the manifest's file entries and the cost.

    ``previous`` maps sha256 → key of objects already stored (:func:`objects_by_sha256` of the version the manifest
    names): a part with one of those hashes is copied server-side, falling back to an upload if the source is gone.
    Uploads are conditional (``if_none_match``): a version's keys are fresh, so an existing key is a bug, not a race.
    """
    previous = previous or {}
    lock = threading.Lock()
    counts = {"bytes_uploaded": 0, "bytes_copied": 0, "objects_uploaded": 0, "objects_copied": 0}

    def store_part(key: str, data: memoryview) -> str:
        sha = hashlib.sha256(data).hexdigest()
        source = previous.get(sha)
        if source is not None:
            try:
                blob.copy(source, key)
                with lock:
                    counts["bytes_copied"] += len(data)
                    counts["objects_copied"] += 1
                return sha
            except BlobNotFoundError:
                pass  # collected meanwhile: upload it after all
        blob.put(key, data, if_none_match=True)
        with lock:
            counts["bytes_uploaded"] += len(data)
            counts["objects_uploaded"] += 1
        return sha

    # Files are read from ``files`` one at a time and written in batches of about WRITE_BATCH_PARTS parts, so a
    # mapping that serialises each file when it is read (Snapshot.to_files) never has every file in memory at once.
    metas: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {}
    jobs: list[tuple[str, int | None, Callable[[], str]]] = []  # (file, part index; None: the whole file, job)
    batch_bytes = 0

    def flush() -> None:
        results = _run_all([job for _, _, job in jobs], workers)
        for (name, index, _), sha in zip(jobs, results, strict=True):
            meta = metas.setdefault(name, {"sha256": "", "size": sizes[name]})
            if index is None:
                meta["sha256"] = sha
            else:
                meta.setdefault("parts", []).append({"sha256": sha, "size": split(sizes[name], part_size)[index][1]})
        jobs.clear()

    for name in files:
        view = memoryview(files[name])
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        sizes[name] = len(view)
        pieces = split(len(view), part_size)
        if len(pieces) == 1:
            jobs.append((name, None, partial(store_part, key_of(name), view)))
        else:
            jobs.append((name, None, partial(_sha256, view)))  # the whole file's hash, beside its parts' uploads
            for index, (offset, size) in enumerate(pieces):
                key = Part(index, offset, size, "").key(key_of(name))
                jobs.append((name, index, partial(store_part, key, view[offset : offset + size])))
        batch_bytes += len(view)
        del view
        if batch_bytes >= WRITE_BATCH_PARTS * part_size:
            flush()
            batch_bytes = 0
    flush()
    return metas, TransferStats(**counts)


def fetch_files(
    blob: BlobStore,
    metas: Mapping[str, Mapping[str, Any]],
    key_of: Callable[[str], str],
    *,
    workers: int = 16,
    reuse: Mapping[str, Buffer] | None = None,
    hash_in_fetch_threads: bool = True,
    label: str = "",
) -> dict[str, memoryview]:
    """GET the files ``metas`` names, each into one preallocated buffer, verified part by part; read-only views.

    A file whose whole-file sha256 is a key of ``reuse`` (and has its size) is not fetched: the given buffer is
    shared, not copied. A missing part, a part of the wrong size or with the wrong sha256 raises
    :class:`CorruptIndexError` and nothing is returned. ``hash_in_fetch_threads=False`` hashes every part on the
    calling thread after all have arrived (the old way; for benchmarks only). ``label`` prefixes error messages.
    """
    reuse = reuse or {}
    views: dict[str, memoryview] = {}
    buffers: dict[str, memoryview] = {}
    work: list[tuple[str, Part, memoryview]] = []
    for name, meta in metas.items():
        parts = parts_of(name, meta)
        size = int(meta["size"])
        shared = reuse.get(str(meta["sha256"]))
        if shared is not None and memoryview(shared).nbytes == size:
            views[name] = memoryview(shared).cast("B").toreadonly() if size else memoryview(b"")
            continue
        buffer = memoryview(np.empty(size, dtype=np.uint8)) if size else memoryview(bytearray())
        buffers[name] = buffer
        work.extend((name, part, buffer[part.offset : part.offset + part.size]) for part in parts)

    def check(name: str, part: Part, out: memoryview) -> None:
        if hashlib.sha256(out).hexdigest() != part.sha256:
            where = f"part {part.index} of " if part.index is not None else ""
            raise CorruptIndexError(f"{label}{where}file {name!r} does not match the manifest's checksum")

    def fetch(name: str, part: Part, out: memoryview) -> None:
        key = part.key(key_of(name))
        try:
            if part.size:
                blob.get_into(key, out)
            elif blob.head(key).size:
                raise BlobSizeError(f"{key!r} is not empty")
        except BlobNotFoundError as exc:
            raise CorruptIndexError(f"{label}object {key!r} named by the manifest is missing") from exc
        except BlobSizeError as exc:
            raise CorruptIndexError(f"{label}object {key!r} has another size than the manifest says: {exc}") from exc
        if hash_in_fetch_threads:
            check(name, part, out)

    _run_all([lambda w=w: fetch(*w) for w in work], workers)
    if not hash_in_fetch_threads:
        for name, part, out in work:
            check(name, part, out)
    views.update({name: buffer.toreadonly() for name, buffer in buffers.items()})
    return views


def _sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_all(jobs: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run ``jobs`` on up to ``workers`` threads; their results in order. The first failure cancels the rest
    and is raised (a half-written or half-read version is of no use)."""
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="index-transfer") as pool:
        futures: list[Future[Any]] = [pool.submit(job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            raise failed.exception()  # type: ignore[misc]
        return [future.result() for future in futures]
