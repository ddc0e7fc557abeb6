"""`catalens local` and `catalens upload` as a user runs them: one clear line on mistakes, state kept between runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import StackClient, photo_bytes, start_stack, stop_stack, wait_ready


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    child_env = os.environ | (env or {})
    child_env.pop("AWS_PROFILE", None)
    return subprocess.run(
        [sys.executable, "-m", "catalens_tools.cli", *args],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
        check=False,
    )


def one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("catalens local: starting")]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def busy_port() -> int:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize("option", ["--port", "--moto-port"])
def test_a_taken_port_is_one_clear_line(tmp_path: Path, model_dir: Path, busy_port: int, option: str) -> None:
    other = "--moto-port" if option == "--port" else "--port"
    result = run_cli(
        "local", "--data-dir", str(tmp_path / "d"), option, str(busy_port), other, "0",
        env={"CATALENS_MODEL_DIR": str(model_dir)},
    )  # fmt: skip
    assert result.returncode == 2
    line = one_clear_line(result.stderr)
    assert f"port {busy_port}" in line
    assert "already in use" in line
    assert option in line


def test_a_missing_model_says_run_make_setup(tmp_path: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    result = run_cli("local", "--data-dir", str(tmp_path / "d"), "--port", "0", env={"CATALENS_MODEL_DIR": str(empty)})
    assert result.returncode == 2
    assert "make setup" in one_clear_line(result.stderr)


def test_a_missing_catalog_folder_is_one_clear_line(tmp_path: Path, model_dir: Path) -> None:
    result = run_cli(
        "local", "--catalog", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d"), "--port", "0",
        env={"CATALENS_MODEL_DIR": str(model_dir)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in one_clear_line(result.stderr)


def jpeg_file(path: Path, seed: int) -> Path:
    path.write_bytes(photo_bytes(seed))
    return path


@pytest.mark.slow
def test_state_survives_a_restart_and_fresh_starts_over(tmp_path: Path, model_dir: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    jpeg_file(catalog / "mug.jpg", 50)
    (catalog / "mug.json").write_text(json.dumps({"title": "Mug", "category": "kitchen"}))
    jpeg_file(catalog / "lamp.jpg", 51)
    jpeg_file(catalog / "broken.jpg", 52)
    (catalog / "broken.json").write_text("{ this is not json")
    (catalog / "notes.jpg").write_text("not a photo at all")
    data_dir = tmp_path / "data"

    process, log = start_stack(data_dir, model_dir, "--catalog", str(catalog))
    client = StackClient(wait_ready(process, data_dir, log), process, data_dir, log)
    client.wait_for(lambda: client.status().get("item_count") == 2, what="the two good catalog photos")
    assert client.upload("vase.jpg", photo_bytes(53), title="Vase").status == 201
    client.wait_for(lambda: client.api("GET", "/items/vase").status == 200, what="the uploaded vase")
    event = json.dumps({"user_id": "restart-user", "type": "add_to_cart", "item_id": "mug"}).encode()
    assert client.request("POST", "/local/events", body=event, content_type="application/json").status == 201
    client.wait_for(lambda: client.request("GET", "/local/profile/restart-user").json()["exists"], what="a profile")
    assert stop_stack(process) == 0
    first_log = log.read_text()
    problems = [line for line in first_log.splitlines() if "catalog: " in line]
    assert len(problems) == 2
    assert any("broken.jpg" in line and "not valid JSON" in line for line in problems)
    assert any("notes.jpg" in line and "not a JPEG" in line for line in problems)
    assert "Traceback" not in first_log

    process, log = start_stack(data_dir, model_dir, "--catalog", str(catalog))
    client = StackClient(wait_ready(process, data_dir, log), process, data_dir, log)
    try:
        assert client.status()["item_count"] == 3
        assert client.api("GET", "/items/mug").json()["fields"]["title"] == "Mug"
        assert client.request("GET", "/local/profile/restart-user").json()["exists"]
        assert [h["item_id"] for h in client.search_photo(photo_bytes(53), "k=1").json()["hits"]] == ["vase"]
        new_item = client.upload("bowl.jpg", photo_bytes(54))
        assert new_item.status == 201
        client.wait_for(lambda: client.api("GET", "/items/bowl").status == 200, what="a photo uploaded after restart")
    finally:
        assert stop_stack(process) == 0
    assert "loading catalog" not in log.read_text()  # the catalog was not loaded a second time

    process, log = start_stack(data_dir, model_dir, "--catalog", str(catalog), "--fresh")
    client = StackClient(wait_ready(process, data_dir, log), process, data_dir, log)
    try:
        client.wait_for(lambda: client.status().get("item_count") == 2, what="the catalog again after --fresh")
        assert client.api("GET", "/items/vase").status == 404
        assert not client.request("GET", "/local/profile/restart-user").json()["exists"]
    finally:
        stop_stack(process)


def test_catalens_upload_sends_a_folder_with_its_fields(stack: StackClient, tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    (folder / "sub").mkdir(parents=True)
    jpeg_file(folder / "up-teapot.jpg", 60)
    (folder / "up-teapot.json").write_text(json.dumps({"title": "Théière", "price": 31.5, "tags": ["tea", "pot"]}))
    jpeg_file(folder / "sub" / "up-kettle.jpg", 61)
    (folder / "products.csv").write_text("file,title,brand\nup-kettle.jpg,Kettle,Acme\n")
    (folder / "readme.txt").write_text("not a photo, not picked up")

    result = run_cli(
        "upload", str(folder), "--bucket", stack.info["catalog_bucket"], "--endpoint-url", stack.info["endpoint_url"],
        "--workers", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["uploaded"] == 2
    assert summary["failed"] == 0
    assert "uploading [" in result.stderr

    stack.wait_for(lambda: stack.api("GET", "/items/up-kettle").status == 200, what="the uploaded kettle")
    stack.wait_for(lambda: stack.api("GET", "/items/up-teapot").status == 200, what="the uploaded teapot")
    teapot = stack.api("GET", "/items/up-teapot").json()["fields"]
    assert teapot["title"] == "Théière"
    assert teapot["price"] == 31.5
    assert teapot["tags"] == ["tea", "pot"]
    kettle = stack.api("GET", "/items/up-kettle").json()["fields"]
    assert kettle == kettle | {"title": "Kettle", "brand": "Acme"}


def test_catalens_upload_names_a_missing_bucket(stack: StackClient, tmp_path: Path) -> None:
    jpeg_file(tmp_path / "a.jpg", 70)
    result = run_cli(
        "upload", str(tmp_path), "--bucket", "no-such-bucket", "--endpoint-url", stack.info["endpoint_url"]
    )
    assert result.returncode == 2
    assert "no-such-bucket" in one_clear_line(result.stderr)
