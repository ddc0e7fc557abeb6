"""Typed errors of the core.

Every error a caller can act on derives from :class:`CatalensError` and carries a stable
``code`` (used as the API's error code and as a metric dimension) and a message that names
the problem.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class CatalensError(Exception):
    """Base of all catalens errors; ``code`` is stable and machine-readable."""

    code = "catalens_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class TextSearchUnavailableError(CatalensError):
    """The index backend cannot search by words (S3 Vectors keeps vectors and fields, no word index)."""

    code = "text_search_unavailable"


class ImageError(CatalensError):
    """The bytes are not an image we can safely decode (empty, truncated, not an image, too large)."""

    code = "invalid_image"


class ImageTooComplexError(ImageError):
    """Decoding or embedding the photo ran out of memory: the photo's fault, so permanent (never retried)."""

    code = "image_too_complex"


@contextmanager
def memory_error_as_image_error(nbytes: int) -> Iterator[None]:
    """Turn a ``MemoryError`` while a photo is decoded and embedded into :class:`ImageTooComplexError`.

    A bare ``MemoryError`` would be retried by ingest as if S3 had failed and answered 500 by search; the photo
    that caused it is what must be refused, by name.
    """
    try:
        yield
    except MemoryError as exc:
        raise ImageTooComplexError(
            f"decoding and embedding this {nbytes}-byte photo needs more memory than this function has"
        ) from exc


class ModelError(CatalensError):
    """The model file is missing, malformed, or does not match what the index was built with."""

    code = "model_error"


class UnsafePickleError(ModelError):
    """A weights file asked the unpickler for a global outside the allow-list."""

    code = "unsafe_pickle"
