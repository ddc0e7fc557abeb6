"""All settings read from the environment, in one place.

Handlers and commands call :func:`load_settings` once (at init) and pass values down; nothing
else in the package reads ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

_REPO_MODEL_DIR = Path(__file__).resolve().parents[2] / "build" / "models"
_LAMBDA_MODEL_DIR = Path("/opt/model")


def default_model_dir() -> Path:
    """Where the built model lives: a Lambda layer mounts it at /opt/model; a checkout builds it in build/models."""
    if _LAMBDA_MODEL_DIR.is_dir():
        return _LAMBDA_MODEL_DIR
    return _REPO_MODEL_DIR


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


# The walk's candidate pool a deployment may set (SearchParams.ef; a search raises it to the page it needs). 4,096
# already takes ~40 ms per search at 1M items (docs/operations.md, "Candidates against catalog size").
SEARCH_CANDIDATES_RANGE = (1, 4096)


def _search_candidates(env: dict[str, str]) -> int:
    value = _int(env, "SEARCH_CANDIDATES", 0)
    low, high = SEARCH_CANDIDATES_RANGE
    if value and not low <= value <= high:
        raise ValueError(
            f"environment variable SEARCH_CANDIDATES must be 0 (the index's default) or {low}-{high}, got {value}"
        )
    return value


def _fraction(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number between 0 and 1, got {raw!r}") from exc
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise ValueError(f"environment variable {name} must be a number between 0 and 1, got {raw!r}")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"environment variable {name} must be true or false, got {raw!r}")


INDEX_BACKENDS = ("lambda", "s3vectors")


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw not in choices:
        raise ValueError(f"environment variable {name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Defaults suit the local stack; template.yaml sets them on Lambda."""

    model_dir: Path = field(default_factory=default_model_dir)
    model_variant: str = "int8"  # "int8" (the default: fp32's quality at half the time) or "fp32"
    onnx_threads: int = 1
    max_image_bytes: int = 10 * 1024 * 1024  # catalog photos, read from S3 by ingest
    max_query_image_bytes: int = 4 * 1024 * 1024  # photos sent to the search API (bounded by Lambda's payload)
    max_image_pixels: int = 50_000_000
    catalog_bucket: str = ""
    index_bucket: str = ""
    index_prefix: str = "index/"
    events_table: str = ""
    profiles_table: str = ""
    cooccurrence_table: str = ""  # item-to-item co-engagement counts (profiles issue); "" turns the signal off
    manifest_ttl_seconds: int = 2
    gc_grace_seconds: int = 3600  # index builder: files no retained version needs are deleted once this old
    query_sample_rate: float = 0.25  # share of photo query embeddings kept for query-domain calibration (0: none)
    query_calibration: bool = True  # re-score photo queries with the index's query domain (when it has one)
    query_seed_items: int = 128  # ingest seeds the query domain from synthetic photos of this many items (0: off)
    main_subject: bool = False  # photo queries without a region search their main subject (docs/evaluation.md)
    read_text: bool = True  # ingest reads the text on catalog photos (OCR, models in <model_dir>/ocr) into read_text
    query_read_text: bool = False  # photo queries read their own text and fuse it (docs/evaluation.md, Words)
    shopper_token_parameter: str = ""  # SSM SecureString holding the shopper-token keys; "" verifies no token
    trust_unsigned_user_ids: bool = False  # template TrustUnsignedUserIds: accept a bare user_id (server to server)
    index_backend: str = "lambda"  # template IndexBackend: "lambda" (snapshot + deltas in S3) or "s3vectors"
    vector_bucket: str = ""  # the S3 Vectors bucket and index (index_backend "s3vectors")
    vector_index: str = ""
    search_candidates: int = 0  # template SearchCandidates: the graph walk's candidate pool (0: the index's default)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            model_dir=Path(env["CATALENS_MODEL_DIR"]) if env.get("CATALENS_MODEL_DIR") else default_model_dir(),
            model_variant=env.get("CATALENS_MODEL_VARIANT") or "int8",
            onnx_threads=_int(env, "CATALENS_ONNX_THREADS", 1),
            max_image_bytes=_int(env, "CATALENS_MAX_IMAGE_BYTES", 10 * 1024 * 1024),
            max_query_image_bytes=_int(env, "CATALENS_MAX_QUERY_IMAGE_BYTES", 4 * 1024 * 1024),
            max_image_pixels=_int(env, "CATALENS_MAX_IMAGE_PIXELS", 50_000_000),
            catalog_bucket=env.get("CATALOG_BUCKET", ""),
            index_bucket=env.get("INDEX_BUCKET", ""),
            index_prefix=env.get("INDEX_PREFIX", "index/"),
            events_table=env.get("EVENTS_TABLE", ""),
            profiles_table=env.get("PROFILES_TABLE", ""),
            cooccurrence_table=env.get("COOCCURRENCE_TABLE", ""),
            manifest_ttl_seconds=_int(env, "CATALENS_MANIFEST_TTL_SECONDS", 2),
            gc_grace_seconds=_int(env, "CATALENS_GC_GRACE_SECONDS", 3600),
            query_sample_rate=_fraction(env, "QUERY_SAMPLE_RATE", 0.25),
            query_calibration=_bool(env, "QUERY_CALIBRATION", True),
            query_seed_items=_int(env, "QUERY_SEED_ITEMS", 128),
            main_subject=_bool(env, "MAIN_SUBJECT", False),
            read_text=_bool(env, "READ_TEXT", True),
            query_read_text=_bool(env, "QUERY_READ_TEXT", False),
            shopper_token_parameter=env.get("SHOPPER_TOKEN_PARAMETER", ""),
            trust_unsigned_user_ids=_bool(env, "TRUST_UNSIGNED_USER_IDS", False),
            index_backend=_choice(env, "INDEX_BACKEND", "lambda", INDEX_BACKENDS),
            vector_bucket=env.get("VECTOR_BUCKET", ""),
            vector_index=env.get("VECTOR_INDEX", ""),
            search_candidates=_search_candidates(env),
        )


def load_settings() -> Settings:
    """Settings of this process, from its environment."""
    return Settings.from_env()
