"""An on-disk cache of embeddings per photo, so the grocery evaluation pays for each forward pass once.

The evaluation embeds the same ~3,000 photos for either query split, and every variant of the query path (whole
crop, main subject, regions of composites) re-embeds only what it changes. A cache file belongs to one model
(name, variant, fingerprint) and one *mode* (how a photo becomes the model's input, with a version a change of that
code must bump); rows are keyed by the photo's path relative to the data folder. Writes go to a temporary file
first and are renamed into place, so an interrupted run leaves the old cache whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_CACHE_DIR", "VectorCache"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "catalens" / "grocery"


class VectorCache:
    """Vectors by key in one ``.npz`` file; :meth:`wrap` turns an embed function into a cached one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._rows: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as data:
                self._rows = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_model(cls, cache_dir: Path | None, model: str, mode: str) -> VectorCache:
        """The cache of ``model`` (``name.variant.fingerprint``) in ``mode``; no file when ``cache_dir`` is None."""
        if cache_dir is None:
            return cls(None)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{model}.{mode}")
        return cls(cache_dir / f"{safe}.npz")

    def wrap(
        self, embed: Callable[[list[Path]], np.ndarray], key: Callable[[Path], str] = str
    ) -> Callable[[list[Path]], np.ndarray]:
        """``embed`` with the rows this cache holds served from it and the others embedded and saved."""

        def cached(paths: list[Path]) -> np.ndarray:
            keys = [key(path) for path in paths]
            missing = [i for i, k in enumerate(keys) if k not in self._rows]
            self.hits += len(paths) - len(missing)
            self.misses += len(missing)
            if missing:
                fresh = np.asarray(embed([paths[i] for i in missing]), dtype=np.float32)
                for i, vector in zip(missing, fresh, strict=True):
                    self._rows[keys[i]] = vector
                self.save()
            return np.stack([self._rows[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

        return cached

    def get(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        return [self._rows.get(k) for k in keys]

    def put(self, rows: dict[str, np.ndarray]) -> None:
        self._rows.update({k: np.asarray(v, dtype=np.float32) for k, v in rows.items()})
        self.save()

    def save(self) -> None:
        if self.path is None or not self._rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._rows))
        vectors = np.stack(list(self._rows.values())).astype(np.float32)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        os.close(handle)
        try:
            with open(temporary, "wb") as out:
                np.savez(out, keys=keys, vectors=vectors)
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
