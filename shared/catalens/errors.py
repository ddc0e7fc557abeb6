"""Typed errors of the core.

Every error a caller can act on derives from :class:`CatalensError` and carries a stable
``code`` (used as the API's error code and as a metric dimension) and a message that names
the problem.
"""


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


class ImageError(CatalensError):
    """The bytes are not an image we can safely decode (empty, truncated, not an image, too large)."""

    code = "invalid_image"


class ModelError(CatalensError):
    """The model file is missing, malformed, or does not match what the index was built with."""

    code = "model_error"


class UnsafePickleError(ModelError):
    """A weights file asked the unpickler for a global outside the allow-list."""

    code = "unsafe_pickle"
