"""The builder's local triggers: constant inputs per trigger, alarm fires on OK→ALARM only; small stack helpers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from catalens.errors import ModelError
from catalens_tools.local.pollers import ScheduledInvoker, scheduled_event
from catalens_tools.local.runtime import LambdaContext, describe
from catalens_tools.local.stack import check_model, schedule_seconds


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict) -> dict:
        with self.lock:
            self.events.append(event)
        return {"ok": True}


def test_manual_trigger_sends_the_manual_input() -> None:
    recorder = Recorder()
    invoker = ScheduledInvoker(recorder, "rule", 3600, inputs={"manual": {"trigger": "manual"}}, check_seconds=0.01)
    invoker.start()
    try:
        invoker.trigger()
        assert invoker.wait_for_run(0, timeout=30)
    finally:
        invoker.stop()
        invoker.join(timeout=5)
    assert recorder.events == [{"trigger": "manual"}]
    assert invoker.stats.last_reason == "manual"


def test_alarm_fires_once_per_change_to_alarm() -> None:
    recorder = Recorder()
    states = iter([False, True, True, True, False, True])
    done = threading.Event()

    def alarm() -> bool:
        try:
            return next(states)
        except StopIteration:
            done.set()
            return False

    invoker = ScheduledInvoker(
        recorder, "rule", 3600, inputs={"threshold": {"trigger": "threshold"}}, alarm_state=alarm, check_seconds=0.005
    )
    invoker.start()
    try:
        assert done.wait(timeout=30)
    finally:
        invoker.stop()
        invoker.join(timeout=5)
    assert recorder.events == [{"trigger": "threshold"}, {"trigger": "threshold"}]


def test_a_trigger_without_constant_input_gets_eventbridges_scheduled_event() -> None:
    event = ScheduledInvoker(Recorder(), "my-rule", 60).event_for("schedule")
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"][0].endswith(":rule/my-rule")
    assert scheduled_event("r")["detail"] == {}


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [("rate(1 hour)", 3600), ("rate(5 minutes)", 300), ("rate(1 minute)", 60), ("rate(2 days)", 172800)],
)
def test_schedule_seconds(expression: str, seconds: int) -> None:
    assert schedule_seconds(expression) == seconds


def test_check_model_names_make_setup(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="make setup"):
        check_model(tmp_path, "fp32")
    (tmp_path / "m.fp32.onnx").write_bytes(b"x")
    (tmp_path / "m.fp32.card.json").write_text("{}")
    check_model(tmp_path, "fp32")


def test_lambda_context_and_one_line_errors() -> None:
    context = LambdaContext("SearchFunction", timeout_seconds=29)
    assert context.invoked_function_arn.endswith(":function:SearchFunction")
    assert 0 < context.get_remaining_time_in_millis() <= 29_000
    assert describe(ValueError("first line\nTraceback (most recent call last):\n ...")) == "ValueError: first line"
