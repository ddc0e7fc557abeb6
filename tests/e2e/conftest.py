"""The e2e tier: the local stack (`catalens local`) in a child process, on free ports, in a temporary data folder.

Tests talk to it only over HTTP (the gateway: API + local routes) and, where AWS is the thing being checked (the DLQ),
through the emulator's endpoint with boto3 — like a developer with the AWS CLI pointed at it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT = 180.0  # first import of onnxruntime + model + 55 demo photos through ingest, on 2 busy cores
DEMO_ITEMS = 55


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StackClient:
    """HTTP access to a running local stack (stdlib only)."""

    def __init__(self, info: dict[str, Any], process: subprocess.Popen, data_dir: Path, log_path: Path) -> None:
        self.info = info
        self.process = process
        self.data_dir = data_dir
        self.log_path = log_path
        self.base = info["web_url"].rstrip("/")
        self.key = info["api_key"]

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        key: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        if key:
            all_headers["x-api-key"] = self.key
        if content_type:
            all_headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Response(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, dict(error.headers), error.read())

    def api(self, method: str, path: str, **kwargs: Any) -> Response:
        return self.request(method, "/api" + path, **kwargs)

    def search_photo(
        self, photo: bytes, query: str = "k=12", content_type: str = "image/jpeg", headers: dict[str, str] | None = None
    ) -> Response:
        return self.api("POST", f"/search?{query}", body=photo, content_type=content_type, headers=headers)

    def shopper(self, user: str, ttl: int = 600) -> dict[str, str]:
        """The X-Shopper-Token header for ``user``, from the stack's stand-in for the shop's backend."""
        from urllib.parse import quote

        signed = self.request("GET", f"/local/shopper-token?user={quote(user)}&ttl={ttl}").json()
        return {signed["header"]: signed["token"]}

    def upload(self, name: str, photo: bytes, **fields: Any) -> Response:
        from urllib.parse import quote, urlencode

        query = urlencode({k: str(v) for k, v in fields.items()})
        return self.request(
            "PUT", f"/local/catalog/{quote(name)}?{query}", body=photo, content_type="application/octet-stream"
        )

    def delete(self, name: str) -> Response:
        from urllib.parse import quote

        return self.request("DELETE", f"/local/catalog/{quote(name)}")

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/local/status", key=False).json()

    def wait_for(self, condition: Any, *, timeout: float = 60.0, interval: float = 0.2, what: str = "") -> Any:
        """Poll ``condition()`` until truthy. The deadline only stops a hung test; speed is `catalens bench`'s job."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what or condition} after {timeout:.0f}s ({self.log_path})")
            time.sleep(interval)

    def wait_ingested(self, *, timeout: float = 90.0) -> dict[str, Any]:
        """Until the ingest queue is empty (every photo either indexed or in the DLQ)."""

        def drained() -> dict[str, Any] | None:
            status = self.status()
            return status if status.get("queue") == 0 else None

        return self.wait_for(drained, timeout=timeout, what="an empty ingest queue")

    def aws(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.info["endpoint_url"],
            region_name=self.info["region"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def start_stack(
    data_dir: Path, model_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, Path]:
    """Start `catalens local` on free ports; returns the process and its log file."""
    log_path = data_dir.parent / f"{data_dir.name}.log"
    child_env = os.environ | {"CATALENS_MODEL_DIR": str(model_dir), "PYTHONUNBUFFERED": "1"} | (env or {})
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        child_env.pop(name, None)
    command = [sys.executable, "-m", "catalens_tools.cli", "local", "--data-dir", str(data_dir), "--port", "0"]
    command += ["--moto-port", "0", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    return process, log_path


def wait_ready(process: subprocess.Popen, data_dir: Path, log_path: Path, timeout: float = STARTUP_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    info_path = data_dir / "stack.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"catalens local exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if info_path.is_file():
            try:
                return json.loads(info_path.read_text())
            except ValueError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"catalens local not ready after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


def stop_stack(process: subprocess.Popen, timeout: float = 60.0) -> int:
    """Ctrl-C, as a user would; returns the exit code (kills only if it hangs)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("catalens local did not stop within 60 s of Ctrl-C") from None
    return process.returncode


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[StackClient]:
    """One local stack with the demo catalog loaded, shared by the e2e tests (they use their own item ids)."""
    data_dir = tmp_path_factory.mktemp("stack") / "data"
    process, log_path = start_stack(data_dir, model_dir)
    try:
        info = wait_ready(process, data_dir, log_path)
        client = StackClient(info, process, data_dir, log_path)
        client.wait_for(
            lambda: client.status().get("item_count") == DEMO_ITEMS, timeout=STARTUP_TIMEOUT, what="the demo catalog"
        )
        yield client
    finally:
        stop_stack(process)


def photo_bytes(seed: int, *, size: int = 320, base: str | None = None) -> bytes:
    """A JPEG that no other test uses: a demo photo (or a pattern) recoloured and cropped by ``seed``."""
    import numpy as np
    from PIL import Image, ImageOps

    from catalens_tools.local.demo import skimage_data_dir

    rng = np.random.default_rng(seed)
    if base is not None:
        with Image.open(skimage_data_dir() / base) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        left, top = int(rng.integers(0, width // 5)), int(rng.integers(0, height // 5))
        image = image.crop((left, top, left + width * 4 // 5, top + height * 4 // 5))
        image = ImageOps.fit(image, (size, size))
    else:
        grid = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(grid).resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def shopper_photo(seed: int) -> bytes:
    """A shopper-like photo of a demo product (rotated, relit, blurred, re-encoded as the self-check's queries are):
    near its product (cosine ~0.6-0.9) but never a copy of a catalog photo, so searches with it are calibrated."""
    import numpy as np
    from PIL import Image

    from catalens_tools.evaluation.augment import augment
    from catalens_tools.local.demo import PRODUCTS, skimage_data_dir

    source = PRODUCTS[seed % len(PRODUCTS)].source
    with Image.open(skimage_data_dir() / source) as opened:
        image = augment(opened.convert("RGB"), np.random.default_rng(seed))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
