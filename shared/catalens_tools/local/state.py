"""Keep the emulator's data between runs: a snapshot of the buckets and tables in the data folder, restored at start.

moto keeps everything in memory and has no persistence of its own in server mode, so the local stack copies what
matters to disk when it stops cleanly (Ctrl-C) and puts it back into a new emulator at the next start:

- every bucket's current objects (bytes, content type, user metadata) — incremental: an object whose ETag did not
  change since the last snapshot is not copied again;
- every table's items (DynamoDB JSON; binary values base64).

What does not persist: older object versions, queue contents (the queue is drained before the snapshot), the stream's
history (restored items are not replayed to the profile function: it starts reading after them), and anything written
after an unclean stop (kill -9) since the last clean one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FORMAT = 1


@dataclass
class SnapshotResult:
    objects: int = 0
    copied: int = 0
    items: int = 0
    seconds: float = 0.0


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$b64"}:
            return base64.b64decode(value["$b64"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class StateStore:
    """The snapshot in ``root``: ``s3/<logical id>/index.json`` + ``objects/``, ``dynamodb/<logical id>.jsonl``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def exists(self) -> bool:
        return (self.root / "state.json").is_file()

    def info(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------------------------------------------ save
    def save(
        self, s3: Any, ddb: Any, buckets: dict[str, str], tables: dict[str, str], extra: dict | None = None
    ) -> SnapshotResult:
        """Copy ``buckets`` and ``tables`` (logical id -> physical name) into the snapshot."""
        started = time.monotonic()
        result = SnapshotResult()
        for logical_id, bucket in buckets.items():
            objects, copied = self._save_bucket(s3, bucket, self.root / "s3" / logical_id)
            result.objects += objects
            result.copied += copied
        for logical_id, table in tables.items():
            result.items += self._save_table(ddb, table, self.root / "dynamodb" / f"{logical_id}.jsonl")
        info = {"format": STATE_FORMAT, "saved_at": time.time(), **(extra or {})}
        _atomic_write(self.root / "state.json", json.dumps(info, indent=1).encode())
        result.seconds = time.monotonic() - started
        return result

    def _save_bucket(self, s3: Any, bucket: str, folder: Path) -> tuple[int, int]:
        index_path = folder / "index.json"
        try:
            old = json.loads(index_path.read_text())
        except (OSError, ValueError):
            old = {}
        new: dict[str, dict[str, Any]] = {}
        copied = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for summary in page.get("Contents", []):
                key, etag = summary["Key"], summary["ETag"]
                previous = old.get(key)
                if previous and previous["etag"] == etag and (folder / "objects" / previous["file"]).is_file():
                    new[key] = previous
                    continue
                response = s3.get_object(Bucket=bucket, Key=key)
                body = response["Body"].read()
                name = hashlib.sha256(key.encode()).hexdigest()
                _atomic_write(folder / "objects" / name, body)
                new[key] = {
                    "etag": response.get("ETag", etag),
                    "file": name,
                    "content_type": response.get("ContentType", "binary/octet-stream"),
                    "metadata": response.get("Metadata", {}),
                }
                copied += 1
        _atomic_write(index_path, json.dumps(new).encode())
        keep = {entry["file"] for entry in new.values()}
        for stale in (folder / "objects").glob("*") if (folder / "objects").is_dir() else []:
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        return len(new), copied

    def _save_table(self, ddb: Any, table: str, path: Path) -> int:
        lines: list[str] = []
        for page in ddb.get_paginator("scan").paginate(TableName=table):
            lines.extend(json.dumps(_to_json(item)) for item in page.get("Items", []))
        _atomic_write(path, ("\n".join(lines) + ("\n" if lines else "")).encode())
        return len(lines)

    # --------------------------------------------------------------------------------------------------- restore
    def restore(self, s3: Any, ddb: Any, buckets: dict[str, str], tables: dict[str, str]) -> SnapshotResult:
        """Put the snapshot back into a freshly provisioned emulator (same logical ids, possibly new names)."""
        started = time.monotonic()
        result = SnapshotResult()
        for logical_id, bucket in buckets.items():
            result.objects += self._restore_bucket(s3, bucket, self.root / "s3" / logical_id)
        for logical_id, table in tables.items():
            result.items += self._restore_table(ddb, table, self.root / "dynamodb" / f"{logical_id}.jsonl")
        result.seconds = time.monotonic() - started
        return result

    def _restore_bucket(self, s3: Any, bucket: str, folder: Path) -> int:
        try:
            index = json.loads((folder / "index.json").read_text())
        except (OSError, ValueError):
            return 0
        restored = 0
        for key, entry in index.items():
            path = folder / "objects" / entry["file"]
            if not path.is_file():
                continue
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=path.read_bytes(),
                ContentType=entry.get("content_type") or "binary/octet-stream",
                Metadata=entry.get("metadata") or {},
            )
            restored += 1
        return restored

    def _restore_table(self, ddb: Any, table: str, path: Path) -> int:
        if not path.is_file():
            return 0
        items = [_from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        for batch in _chunks(items, 25):
            pending = {table: [{"PutRequest": {"Item": item}} for item in batch]}
            for _ in range(5):
                pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break
        return len(items)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
