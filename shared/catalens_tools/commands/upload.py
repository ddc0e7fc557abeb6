"""``catalens upload DIR --bucket B``: a merchant's photos to the catalog bucket, in parallel, with their fields.

Works against real AWS (``--profile``/``--region``, credentials as the AWS CLI finds them) and against the local stack
(``--endpoint-url http://127.0.0.1:4566``; no credentials needed there).
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlsplit

from catalens.errors import CatalensError


class UploadError(CatalensError):
    code = "upload_failed"


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser(
        "upload",
        help="upload a folder of product photos (fields from sidecar JSON or products.csv) to the catalog bucket",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", metavar="DIR", help="folder of photos (searched recursively)")
    parser.add_argument("--bucket", required=True, help="catalog bucket name")
    parser.add_argument("--prefix", default="", help="key prefix inside the bucket (default: none)")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (the local stack's emulator)")
    parser.add_argument("--profile", default=None, help="AWS profile")
    parser.add_argument("--region", default=None, help="AWS region")
    parser.add_argument("--workers", type=int, default=8, help="parallel uploads (default 8)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(func=run)


def is_local_endpoint(url: str | None) -> bool:
    host = urlsplit(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1") or bool(host and host.startswith("127."))


def make_s3_client(*, endpoint_url: str | None, profile: str | None, region: str | None):
    """An S3 client for real AWS or the emulator; the emulator takes any credentials, so none are required there."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound as exc:
        raise UploadError(f"AWS profile {profile!r} not found ({exc})") from None
    credentials: dict[str, str] = {}
    if is_local_endpoint(endpoint_url) and session.get_credentials() is None:
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    config = Config(max_pool_connections=64, retries={"max_attempts": 5, "mode": "standard"})
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region or session.region_name or "us-east-1",
        config=config,
        **credentials,
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import botocore.exceptions

    from catalens_tools.local.catalog import scan_catalog, total_bytes
    from catalens_tools.local.uploader import ProgressBar, upload_catalog

    catalog = scan_catalog(Path(args.folder))
    for problem in catalog.problems:
        print(f"catalens upload: {problem}", file=sys.stderr)
    if not catalog.photos:
        raise UploadError(f"no photos to upload in {args.folder}")
    s3 = make_s3_client(endpoint_url=args.endpoint_url, profile=args.profile, region=args.region)
    try:
        s3.head_bucket(Bucket=args.bucket)
    except botocore.exceptions.NoCredentialsError:
        raise UploadError("no AWS credentials found: pass --profile, or configure the AWS CLI") from None
    except botocore.exceptions.EndpointConnectionError as exc:
        raise UploadError(f"cannot reach S3 at {exc.kwargs.get('endpoint_url', args.endpoint_url)}") from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        reason = {"404": "does not exist", "403": "is not accessible with these credentials"}.get(code, code)
        raise UploadError(f"bucket {args.bucket!r} {reason}") from None
    progress = ProgressBar(len(catalog.photos), total_bytes(catalog.photos))
    result = upload_catalog(s3, args.bucket, args.prefix, catalog.photos, workers=args.workers, progress=progress)
    for path, reason in result.failed:
        print(f"catalens upload: {path}: {reason}", file=sys.stderr)
    summary = result.as_dict() | {"skipped": len(catalog.problems), "bucket": args.bucket, "prefix": args.prefix}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"uploaded {summary['uploaded']} photos ({result.bytes / 1e6:.1f} MB) to s3://{args.bucket}/{args.prefix} "
            f"in {result.seconds:.1f}s; {summary['failed']} failed, {summary['skipped']} skipped",
            file=sys.stderr,
        )
    return 1 if result.failed else 0
