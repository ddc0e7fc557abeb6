"""Which log holds what while the local stack runs, and what the dead-letter line says (no AWS, no sockets)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalens_tools.local.runtime import LocalFunction
from catalens_tools.local.stack import POWERTOOLS_LOCAL_ENV, LocalConfig, LocalStack, RunningFunction

REJECTED = "not an image: 19 bytes in no supported format"


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """A stack with its logging set up as ``start`` sets it up, and the ingest handler imported as it imports it."""
    for name, value in POWERTOOLS_LOCAL_ENV.items():
        monkeypatch.setenv(name, value)  # what _load_functions gives every handler before its import
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    local = LocalStack(LocalConfig(data_dir=tmp_path / "data", quiet=True))
    local._prepare_data_dir()
    local._configure_logging()
    from aws_lambda_powertools import Logger

    Logger(service="ingest")  # functions/ingest/app.py does this at import time
    try:
        yield local
    finally:
        local.stop(save=False)


def failing_ingest(event: dict, context: object) -> dict:
    """What the ingest service does with an undecodable photo: logs why (with the key), then raises."""
    logging.getLogger("catalens.service.ingest").error(
        "photo rejected", extra={"key": "bad.jpg", "code": "not_an_image", "reason": REJECTED}
    )
    raise RuntimeError("BatchProcessingError stand-in")


def dead_letter(key: str) -> dict:
    body = {"Records": [{"s3": {"object": {"key": key}}}]}
    return {"MessageId": "m-1", "Body": json.dumps(body), "Attributes": {"ApproximateReceiveCount": "3"}}


def test_a_rejected_photos_reason_is_in_local_log_and_quoted_by_the_dead_letter_line(
    stack: LocalStack, capfd: pytest.CaptureFixture[str]
) -> None:
    function = LocalFunction("IngestFunction", failing_ingest)
    stack.functions["IngestFunction"] = RunningFunction(
        "IngestFunction", "IngestFunction", function, {}, Path("app.py"), 30, 1024
    )
    with pytest.raises(RuntimeError):
        function.invoke({"Records": []})
    stack._report_dead_letter("IngestFunction", dead_letter("bad.jpg"))
    logs = stack.data_dir / "logs"
    for handler in logging.getLogger().handlers:
        handler.flush()
    local_log = (logs / "local.log").read_text()
    assert "photo rejected" in local_log
    assert REJECTED in local_log
    assert "function=IngestFunction" in local_log  # the core's lines say which function logged them

    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "dead-letter queue" in line]
    assert "gave up on bad.jpg after 3 tries" in line
    assert REJECTED in line
    assert "(not_an_image)" in line
    assert str(logs / "local.log") in line
    assert "functions.log" not in line
    assert "photo rejected" not in err.replace(line, "")  # the function's own log stays off the terminal


def test_without_a_logged_reason_the_line_still_names_the_log_that_has_the_traceback(
    stack: LocalStack, capfd: pytest.CaptureFixture[str]
) -> None:
    stack._report_dead_letter("IngestFunction", dead_letter("other.jpg"))
    line = capfd.readouterr().err.strip()
    assert line.endswith(f"dead-letter queue (details: {stack.data_dir / 'logs' / 'local.log'})")
