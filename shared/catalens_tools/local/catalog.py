"""A merchant's catalog folder: photos plus their product fields, read and checked before anything is uploaded.

Fields come from a sidecar ``<name>.json`` beside the photo (``coffee.json`` or ``coffee.jpg.json``), or from a
``products.csv`` in the folder with a key column (``key``, ``file``, ``filename``, ``image`` or ``item_id``) naming the
photo by file name or by item id; a sidecar wins per field. A problem with one file becomes one
:class:`CatalogProblem` line naming the file, never an exception that stops the others.

This module does no I/O beyond reading the folder; uploading is :mod:`catalens_tools.local.uploader`.
"""

from __future__ import annotations

import csv
import email.header
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalens.errors import CatalensError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
CSV_NAME = "products.csv"
CSV_KEY_COLUMNS = ("key", "file", "filename", "image", "item_id")
MAX_METADATA_BYTES = 2048  # S3's limit for all user metadata of one object
MAX_SIDECAR_BYTES = 64 * 1024
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class CatalogError(CatalensError):
    """The catalog folder itself is unusable (missing, empty, or its products.csv cannot be read)."""

    code = "bad_catalog"


@dataclass(frozen=True)
class CatalogProblem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CatalogPhoto:
    """One photo to upload: where it is, its S3 key's file name, and its product fields."""

    path: Path
    name: str  # file name in the bucket (the item id is its stem)
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def item_id(self) -> str:
        return Path(self.name).stem

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(Path(self.name).suffix.lower(), "application/octet-stream")

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class Catalog:
    photos: list[CatalogPhoto]
    problems: list[CatalogProblem]


def looks_like_image(head: bytes) -> bool:
    """A cheap magic-number check (the full decode is ingest's job, with its limits)."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(signature) for signature in _SIGNATURES)


def scan_catalog(folder: Path) -> Catalog:
    """Photos of ``folder`` (recursively), with fields from sidecars and products.csv, and the problems found."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise CatalogError(f"catalog folder {folder} does not exist or is not a folder")
    problems: list[CatalogProblem] = []
    csv_fields = _read_products_csv(folder / CSV_NAME)
    photos: list[CatalogPhoto] = []
    seen: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        name = safe_name(path.name)
        if name in seen:
            problems.append(CatalogProblem(path, f"same file name as {seen[name]}; item ids must be unique, skipped"))
            continue
        try:
            with path.open("rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            problems.append(CatalogProblem(path, f"cannot be read ({exc.strerror}), skipped"))
            continue
        if not head:
            problems.append(CatalogProblem(path, "is empty, skipped"))
            continue
        if not looks_like_image(head):
            problems.append(CatalogProblem(path, "is not a JPEG/PNG/WebP/GIF/BMP/TIFF image, skipped"))
            continue
        fields = dict(csv_fields.get(path.name) or csv_fields.get(path.stem) or {})
        try:
            fields.update(_read_sidecar(path))
        except CatalogError as exc:
            problems.append(CatalogProblem(path, f"{exc}, skipped"))
            continue
        seen[name] = path
        photos.append(CatalogPhoto(path=path, name=name, fields=fields))
    return Catalog(photos=photos, problems=problems)


def safe_name(name: str) -> str:
    """A file name that is a sensible S3 key segment and item id: no slashes or control characters."""
    cleaned = re.sub(r"[\x00-\x1f/\\]+", "_", name).strip()
    return cleaned or "photo"


def _read_sidecar(photo: Path) -> dict[str, Any]:
    for candidate in (photo.with_suffix(".json"), photo.with_name(photo.name + ".json")):
        if not candidate.is_file():
            continue
        raw = candidate.read_bytes()
        if len(raw) > MAX_SIDECAR_BYTES:
            raise CatalogError(f"sidecar {candidate.name} is {len(raw)} bytes; the limit is {MAX_SIDECAR_BYTES}")
        try:
            value = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CatalogError(f"sidecar {candidate.name} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise CatalogError(f"sidecar {candidate.name} must hold a JSON object, not {type(value).__name__}")
        return value
    return {}


def _read_products_csv(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogError(f"{path} cannot be read as UTF-8 CSV ({exc})") from None
    if not rows:
        return {}
    columns = [c.strip().lower() for c in rows[0] if c]
    key_column = next((c for c in CSV_KEY_COLUMNS if c in columns), None)
    if key_column is None:
        raise CatalogError(f"{path} needs a key column named one of {', '.join(CSV_KEY_COLUMNS)}")
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        clean = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k}
        key = clean.pop(key_column, "")
        if key:
            out[key] = {k: v for k, v in clean.items() if v}
    return out


def metadata_for(fields: dict[str, Any]) -> dict[str, str] | None:
    """Fields as S3 user metadata (RFC 2047 for non-ASCII text), or None when they do not fit (then a sidecar goes).

    Metadata travels with the photo in one PUT, so ingest never sees a photo without its fields; only nested or
    oversized fields need the sidecar object.
    """
    metadata: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, list) and all(isinstance(v, str) and "," not in v for v in value):
            value = ",".join(value)
        if isinstance(value, dict | list):
            return None
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not text.isascii():
            text = email.header.Header(text, "utf-8").encode(maxlinelen=10_000)
        if "\n" in text or "\r" in text:
            return None
        metadata[str(name).lower()] = text
    size = sum(len(k) + len(v) for k, v in metadata.items())
    return metadata if size <= MAX_METADATA_BYTES else None


def total_bytes(photos: Iterable[CatalogPhoto]) -> int:
    return sum(photo.size for photo in photos)
