"""A minimal Lambda runtime: load a handler from ``functions/<name>/app.py`` and invoke it like one warm container.

moto never runs Lambda code without Docker, so the local stack imports the real handlers and calls them itself. One
:class:`LocalFunction` is one warm execution environment: imported once (module-level init runs once, as on a cold
start), and invoked one event at a time — AWS never runs two events concurrently in one environment, and handlers such
as Powertools' resolver keep per-request state on module globals, so the lock is part of being faithful.
"""

from __future__ import annotations

import contextvars
import importlib.util
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from catalens.errors import CatalensError

log = logging.getLogger("catalens_tools.local")

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT = "123456789012"  # moto's default account

# The function whose handler is running in this thread: its logs are the function's (CloudWatch's, on AWS).
RUNNING_FUNCTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("running_function", default=None)


def describe(exc: BaseException, limit: int = 300) -> str:
    """One line for an exception: its type and the first line of its message (tracebacks stay in the log file)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class HandlerLoadError(CatalensError):
    """A function's handler module is missing or failed at import (its init code raised)."""

    code = "handler_load_failed"


@dataclass
class LambdaContext:
    """The attributes and method of AWS's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_seconds: int = 30
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    region: str = LOCAL_REGION
    account: str = LOCAL_ACCOUNT
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/[{self.function_version}]{self.aws_request_id[:8]}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(app_path: Path, module_name: str, attribute: str = "lambda_handler") -> Callable[..., Any]:
    """Import ``app_path`` as ``module_name`` (every function's file is called app.py) and return its handler.

    The function's own folder goes first on ``sys.path`` while it imports, as Lambda puts the code root there.
    """
    if not app_path.is_file():
        raise HandlerLoadError(f"handler file {app_path} does not exist")
    spec = importlib.util.spec_from_file_location(module_name, app_path)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot import {app_path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(app_path.parent))
    try:
        spec.loader.exec_module(module)
    except CatalensError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise HandlerLoadError(f"{app_path} failed at import: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(app_path.parent))
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise HandlerLoadError(f"{app_path} has no callable {attribute}")
    return handler


@dataclass
class InvocationStats:
    invocations: int = 0
    errors: int = 0
    total_ms: float = 0.0
    last_error: str = ""


class LocalFunction:
    """One warm execution environment of a function: invoked one event at a time.

    Parameters
    ----------
    name:
        Function name, as in the template (it appears in the context's ARN and in logs).
    handler:
        The ``lambda_handler(event, context)`` callable.
    timeout_seconds, memory_mb:
        What the context reports; the timeout is not enforced (a thread cannot be killed), only reported.
    """

    def __init__(
        self, name: str, handler: Callable[[dict, Any], Any], *, timeout_seconds: int = 30, memory_mb: int = 1024
    ) -> None:
        self.name = name
        self.handler = handler
        self.timeout_seconds = timeout_seconds
        self.memory_mb = memory_mb
        self.stats = InvocationStats()
        self._lock = threading.Lock()

    def invoke(self, event: dict) -> Any:
        """Run the handler on ``event``; a raised exception is a function error, re-raised for the caller to map."""
        context = LambdaContext(self.name, memory_limit_in_mb=self.memory_mb, timeout_seconds=self.timeout_seconds)
        with self._lock:
            started = time.perf_counter()
            running = RUNNING_FUNCTION.set(self.name)
            try:
                return self.handler(event, context)
            except Exception as exc:
                RUNNING_FUNCTION.reset(running)  # what follows is the runtime's report, not the function's log
                running = None
                self.stats.errors += 1
                self.stats.last_error = describe(exc)
                # Powertools raises BatchProcessingError when every record of a batch failed: that is the batch
                # protocol (the records are retried, then dead-lettered), not a crash; the stack reports dead letters.
                level = logging.INFO if type(exc).__name__ == "BatchProcessingError" else logging.WARNING
                log.log(level, "function %s raised %s", self.name, self.stats.last_error, exc_info=True)
                raise
            finally:
                if running is not None:
                    RUNNING_FUNCTION.reset(running)
                self.stats.invocations += 1
                self.stats.total_ms += (time.perf_counter() - started) * 1000
