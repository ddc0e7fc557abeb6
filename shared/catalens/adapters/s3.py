"""boto3 adapter of :class:`~catalens.ports.BlobStore` for one S3 bucket.

The client is injected (tests hand in a moto-backed one; Lambdas create one at init). S3's answers
to conditional requests are translated precisely, because the index protocol depends on them:

============================================  ==================================
S3 answer                                      raised
============================================  ==================================
412 ``PreconditionFailed``                     :class:`PreconditionFailedError`
404 ``NoSuchKey`` on a put with ``If-Match``   :class:`PreconditionFailedError`
409 ``ConditionalRequestConflict``             :class:`ConflictError` (retry)
304 ``NotModified`` on a conditional get       :class:`NotModifiedError`
404 ``NoSuchKey`` / ``NotFound``               :class:`BlobNotFoundError`
anything else                                  :class:`BlobStoreError`
============================================  ==================================
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from botocore.exceptions import ClientError

from catalens.ports import (
    Blob,
    BlobInfo,
    BlobNotFoundError,
    BlobSizeError,
    BlobStoreError,
    ConflictError,
    NotModifiedError,
    PreconditionFailedError,
)

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
_NOT_MODIFIED_CODES = frozenset({"NotModified", "304"})
_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "409"})
READ_PIECE = 2**20
"""Bytes asked of a response body per ``readinto`` (its temporaries are this size, not the object's)."""


def _error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def _translate(exc: ClientError, *, operation: str, key: str, conditional_put: bool = False) -> BlobStoreError:
    code, status = _error_code(exc)
    where = f"{operation} s3 key {key!r}"
    if code in _PRECONDITION_CODES or status == 412:
        return PreconditionFailedError(f"{where}: precondition failed ({code or status})")
    if code in _CONFLICT_CODES or status == 409:
        return ConflictError(f"{where}: concurrent conditional write ({code or status}), retry")
    if code in _NOT_MODIFIED_CODES or status == 304:
        return NotModifiedError(f"{where}: not modified")
    if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
        if conditional_put:  # If-Match on a key that vanished: the version we expected is gone
            return PreconditionFailedError(f"{where}: object is missing (If-Match)")
        return BlobNotFoundError(f"{where}: no such key")
    return BlobStoreError(f"{where} failed: {code or status}: {exc}")


class S3BlobStore:
    """:class:`~catalens.ports.BlobStore` over one bucket (keys are used verbatim, no implicit prefix).

    Parameters
    ----------
    client:
        A boto3 S3 client (``boto3.client("s3")``), injected so tests and handlers choose its config.
    bucket:
        Bucket name.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_none_match_etag is not None:
            kwargs["IfNoneMatch"] = if_none_match_etag
        try:
            response = self._client.get_object(**kwargs)
            data = response["Body"].read()
        except ClientError as exc:
            raise _translate(exc, operation="get", key=key) from exc
        return Blob(key=key, data=data, etag=response["ETag"], last_modified=response["LastModified"])

    def put(
        self, key: str, data: bytes | memoryview, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        body: Any = data
        if isinstance(data, memoryview):  # botocore refuses memoryviews; small ones are not worth a reader
            body = BufferReader(data) if len(data) > 2**20 else bytes(data)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            response = self._client.put_object(**kwargs)
        except ClientError as exc:
            raise _translate(exc, operation="put", key=key, conditional_put=if_match is not None) from exc
        return str(response["ETag"])

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield BlobInfo(
                        key=obj["Key"], etag=obj["ETag"], size=int(obj["Size"]), last_modified=obj["LastModified"]
                    )
        except ClientError as exc:
            raise _translate(exc, operation="list", key=prefix) from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code, _ = _error_code(exc)
            if code in _NOT_FOUND_CODES:
                return
            raise _translate(exc, operation="delete", key=key) from exc

    def delete_many(self, keys: Sequence[str]) -> None:
        """DeleteObjects in chunks of 1000 (quiet mode: only failures come back)."""
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
                )
            except ClientError as exc:
                raise _translate(exc, operation="delete_objects", key=chunk[0]) from exc
            failures = [e for e in response.get("Errors", []) if e.get("Code") not in _NOT_FOUND_CODES]
            if failures:
                first = failures[0]
                raise BlobStoreError(
                    f"delete_objects failed for {len(failures)} of {len(chunk)} keys, "
                    f"first {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )

    def head(self, key: str) -> BlobInfo:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise _translate(exc, operation="head", key=key) from exc
        return BlobInfo(
            key=key,
            etag=response["ETag"],
            size=int(response["ContentLength"]),
            last_modified=response["LastModified"],
        )

    def copy(self, source_key: str, dest_key: str) -> str:
        """CopyObject within the bucket (up to 5 GiB; the index's parts are far smaller)."""
        try:
            response = self._client.copy_object(
                Bucket=self.bucket, Key=dest_key, CopySource={"Bucket": self.bucket, "Key": source_key}
            )
        except ClientError as exc:
            raise _translate(exc, operation="copy", key=f"{source_key} -> {dest_key}") from exc
        return str(response["CopyObjectResult"]["ETag"])

    def get_into(self, key: str, out: memoryview) -> int:
        """GetObject streamed into ``out`` in pieces of :data:`READ_PIECE`: no intermediate bytes of the whole body.

        urllib3's ``readinto(b)`` reads ``len(b)`` bytes into a temporary and copies it (http.client makes a second
        one), so asking for a whole part at once held two part-sized temporaries per fetch thread.
        """
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise _translate(exc, operation="get", key=key) from exc
        body = response["Body"]
        try:
            size = int(response["ContentLength"])
            if size != len(out):
                raise BlobSizeError(f"get s3 key {key!r}: {size} bytes, the caller expected {len(out)}")
            done = 0
            while done < size:
                read = body.readinto(out[done : done + READ_PIECE])
                if not read:
                    raise BlobStoreError(f"get s3 key {key!r}: body ended after {done} of {size} bytes")
                done += read
            return done
        finally:
            body.close()


class BufferReader(io.RawIOBase):
    """A seekable, read-only file over a memoryview, so a slice of a large file uploads without a copy of it.

    botocore accepts bytes or a file; ``bytes(view)`` would copy every part once more while it uploads.
    """

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view) - self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._view) - self._pos)
        target[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n
