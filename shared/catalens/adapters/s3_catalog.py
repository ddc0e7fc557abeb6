"""boto3 adapter of :class:`~catalens.ports.CatalogReader`: the merchant's catalog bucket, read-only.

A photo's size is known from the GET's ``Content-Length`` before its body is read, so an oversized upload
is refused without downloading it. ``Metadata`` comes back from S3 lower-cased without ``x-amz-meta-``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from catalens.ports import CatalogObject

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3CatalogReader:
    """Reads catalog objects with an injected S3 client (moto in tests, the Lambda's client on AWS)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def head(self, bucket: str, key: str) -> CatalogObject | None:
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return _object(bucket, key, response, None)

    def read(self, bucket: str, key: str, *, max_bytes: int) -> CatalogObject | None:
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        body = response["Body"]
        try:
            if int(response.get("ContentLength", 0)) > max_bytes:
                return _object(bucket, key, response, None)
            data = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:  # Content-Length lied or was absent
            return _object(bucket, key, response | {"ContentLength": len(data)}, None)
        return _object(bucket, key, response, data)


def _is_missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")) in _MISSING or status == 404


def _object(bucket: str, key: str, response: dict[str, Any], data: bytes | None) -> CatalogObject:
    return CatalogObject(
        bucket=bucket,
        key=key,
        etag=str(response.get("ETag", "")).strip('"'),
        size=int(response.get("ContentLength", 0) if data is None else len(data)),
        metadata={str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()},
        content_type=str(response.get("ContentType", "")),
        version_id=response.get("VersionId"),
        data=data,
    )
