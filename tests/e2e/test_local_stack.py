"""The whole system through the local stack, over HTTP: what a merchant, a shopper and a client app see."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from tests.e2e.conftest import DEMO_ITEMS, StackClient, photo_bytes


def hit_ids(response_json: dict) -> list[str]:
    return [hit["item_id"] for hit in response_json["hits"]]


def is_indexed(stack: StackClient, item_id: str) -> bool:
    return stack.api("GET", f"/items/{item_id}").status == 200


# --------------------------------------------------------------------------------------------------------- search
def test_search_by_photo_finds_the_same_product_first(stack: StackClient) -> None:
    query = photo_bytes(1, base="coffee.png")  # a crop of the photo the espresso cups were made from
    response = stack.search_photo(query, "k=5&explain=true")
    assert response.status == 200, response.body
    answer = response.json()
    ids = hit_ids(answer)
    assert len(ids) == 5
    assert ids[0].startswith("espresso-cup-")
    assert answer["item_count"] >= DEMO_ITEMS  # other tests add their own items to the shared stack
    first = answer["hits"][0]
    assert first["fields"]["category"] == "kitchen"
    assert first["image_key"].endswith(".jpg")
    assert "visual" in first["explain"]
    scores = [hit["score"] for hit in answer["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_the_photo_can_travel_raw_as_base64_json_or_multipart(stack: StackClient) -> None:
    photo = photo_bytes(2, base="chelsea.png")
    raw = stack.search_photo(photo, "k=3").json()
    as_json = stack.api(
        "POST",
        "/search",
        body=json.dumps({"image": base64.b64encode(photo).decode(), "k": 3}).encode(),
        content_type="application/json",
    ).json()
    boundary = uuid.uuid4().hex
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    multipart = stack.api("POST", "/search", body=form, content_type=f"multipart/form-data; boundary={boundary}").json()
    assert hit_ids(raw)[0].startswith("tabby-print-")
    assert hit_ids(as_json) == hit_ids(raw)
    assert hit_ids(multipart) == hit_ids(raw)


def test_filters_and_more_like_this(stack: StackClient) -> None:
    photo = photo_bytes(3, base="coffee.png")
    posters = stack.search_photo(photo, "k=10&category=posters").json()
    assert posters["hits"]
    assert {hit["fields"]["category"] for hit in posters["hits"]} == {"posters"}
    cheap = stack.search_photo(photo, "k=10&price_max=20").json()
    assert all(hit["fields"]["price"] <= 20 for hit in cheap["hits"])
    similar = stack.api("GET", "/items/motorbike-classic/similar?k=4").json()
    assert "motorbike-classic" not in hit_ids(similar)
    assert hit_ids(similar)[0].startswith("motorbike-")


def test_the_api_needs_the_key_and_answers_malformed_requests_with_4xx(stack: StackClient) -> None:
    for denied in (
        stack.api("GET", "/health", key=False),
        stack.api("GET", "/health", headers={"x-api-key": "wrong"}, key=False),
    ):
        assert denied.status == 403
        assert denied.json()["code"] == "invalid_api_key"
    assert stack.api("GET", "/health").json()["item_count"] >= DEMO_ITEMS
    not_an_image = stack.search_photo(b"definitely not a photo")
    assert 400 <= not_an_image.status < 500
    assert set(not_an_image.json()) >= {"code", "message"}
    assert stack.api("GET", "/items/no-such-item").status == 404
    nowhere = stack.api("GET", "/nowhere")
    assert (nowhere.status, nowhere.json()["code"]) == (403, "forbidden")
    document = stack.api("GET", "/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": "/api"}], "the document points where the local gateway serves the API"


def test_a_photo_whose_event_exceeds_lambdas_payload_limit_is_413_in_the_error_shape(stack: StackClient) -> None:
    too_large = stack.search_photo(b"\xff\xd8\xff" + bytes(4_900_000))  # 6.5 MB once base64-encoded in the event
    assert too_large.status == 413
    assert too_large.json()["code"] == "payload_too_large"


def test_a_client_that_hangs_up_leaves_no_traceback_in_the_terminal(stack: StackClient) -> None:
    import socket
    import struct
    from urllib.parse import urlsplit

    address = urlsplit(stack.base)
    for raw in (
        b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/search HTTP/1.1\r\nContent-Length: 9999\r\n\r\n",
    ):
        with socket.create_connection((address.hostname, address.port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            client.sendall(raw)
    assert stack.request("GET", "/local/status", key=False).status == 200  # still serving
    assert "Traceback" not in stack.log_path.read_text(errors="replace")


# ------------------------------------------------------------------------------------------------------- merchant
def test_an_uploaded_photo_becomes_searchable_and_a_deleted_one_disappears(stack: StackClient) -> None:
    photo = photo_bytes(10, base="rocket.jpg")
    item_id = f"e2e-rocket-{uuid.uuid4().hex[:8]}"
    created = stack.upload(f"{item_id}.jpg", photo, title="Test rocket", category="e2e", price="9.5", currency="EUR")
    assert created.status == 201, created.body
    assert created.json()["item_id"] == item_id  # the id ingest will give it (catalens.service.ingest.item_id_for_key)
    stack.wait_for(lambda: is_indexed(stack, item_id), what=f"{item_id} to be searchable")

    item = stack.api("GET", f"/items/{item_id}").json()
    assert item["fields"]["title"] == "Test rocket"
    assert item["fields"]["price"] == 9.5
    assert hit_ids(stack.search_photo(photo, "k=3").json())[0] == item_id
    assert photo == stack.request("GET", f"/local/photos/{item_id}.jpg", key=False).body

    assert stack.delete(f"{item_id}.jpg").status == 200
    stack.wait_for(lambda: not is_indexed(stack, item_id), what=f"{item_id} to be removed")
    assert item_id not in hit_ids(stack.search_photo(photo, "k=20").json())


def test_words_find_a_fresh_upload_by_its_title_and_refine_a_photo_search(stack: StackClient) -> None:
    photo = photo_bytes(11, base="rocket.jpg")
    token = uuid.uuid4().hex[:8]
    item_id = f"e2e-words-{token}"
    stack.upload(f"{item_id}.jpg", photo, title=f"Crème brûlée rocket {token}", category="e2e")
    stack.wait_for(lambda: is_indexed(stack, item_id), what=f"{item_id} to be searchable")

    found = stack.api("GET", f"/search?q=creme+brulee+{token}&k=3&explain=true")
    assert found.status == 200, found.body
    assert found.json()["query"] == {"type": "text", "q": f"creme brulee {token}"}
    assert hit_ids(found.json())[0] == item_id
    posted = stack.api(
        "POST", "/search", body=json.dumps({"q": f"Crème {token}"}).encode(), content_type="application/json"
    )
    assert hit_ids(posted.json())[0] == item_id
    fused = stack.search_photo(photo, f"k=3&explain=true&q={token}").json()
    assert hit_ids(fused)[0] == item_id
    assert {"visual", "text", "fused"} <= set(fused["hits"][0]["explain"])
    bad = stack.api("GET", "/search?q=%21%21%21")
    assert bad.status == 400
    assert bad.json()["code"] == "invalid_query"
    assert stack.delete(f"{item_id}.jpg").status == 200
    stack.wait_for(lambda: not is_indexed(stack, item_id), what=f"{item_id} to be removed")


def test_a_bad_upload_lands_in_the_dlq_and_nothing_else_is_lost(stack: StackClient) -> None:
    tag = uuid.uuid4().hex[:8]
    good = [f"e2e-good-{tag}-{n}" for n in range(3)]
    bad = f"e2e-bad-{tag}"
    before = stack.wait_ingested()["item_count"]  # a baseline with nothing of earlier tests still in flight
    stack.upload(f"{good[0]}.jpg", photo_bytes(20))
    assert stack.upload(f"{bad}.jpg", b"\xff\xd8\xff\xe0 this is a truncated JPEG").status == 201
    stack.upload(f"{good[1]}.jpg", photo_bytes(21))
    stack.upload(f"{good[2]}.png", photo_bytes(22))

    sqs = stack.aws("sqs")
    dlq = stack.info["ingest_dlq_url"]

    def dead_letters() -> list[dict]:
        attributes = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
        if attributes["Attributes"]["ApproximateNumberOfMessages"] == "0":
            return []
        messages = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return messages.get("Messages", [])

    letters = stack.wait_for(dead_letters, timeout=90, what="the bad photo in the dead-letter queue")
    keys = [record["s3"]["object"]["key"] for m in letters for record in json.loads(m["Body"]).get("Records", [])]
    assert keys == [f"{bad}.jpg"]
    stack.wait_ingested()
    assert all(is_indexed(stack, item_id) for item_id in good)
    assert not is_indexed(stack, bad)
    assert stack.status()["item_count"] == before + len(good)
    sqs.purge_queue(QueueUrl=dlq)  # leave the shared stack's DLQ as we found it


# -------------------------------------------------------------------------------------------------------- shopper
def test_shopper_events_update_the_profile_and_rerank_results(stack: StackClient) -> None:
    user = f"e2e-shopper-{uuid.uuid4().hex[:6]}"
    token = stack.shopper(user)  # signed by the shop's backend (locally: /local/shopper-token)
    query = photo_bytes(30, base="coffee.png")
    plain = stack.search_photo(query, "k=20&explain=true", headers=token).json()
    assert plain["personalized"] is False  # a cold user gets the visual order
    visual_order = hit_ids(plain)
    posters = [hit["item_id"] for hit in plain["hits"] if hit["fields"]["category"] == "posters"]
    assert posters, "the query should reach some posters further down"

    for item_id in ("astronaut-poster-classic", "rocket-model-classic", "deep-field-classic", "tabby-print-classic"):
        for kind in ("click", "add_to_cart"):
            body = json.dumps({"user_id": user, "type": kind, "item_id": item_id}).encode()
            assert stack.request("POST", "/local/events", body=body, content_type="application/json").status == 201

    def profile() -> dict | None:
        answer = stack.request("GET", f"/local/profile/{user}").json()
        return answer if answer["exists"] and sum(answer["summary"]["events"].values()) == 8 else None

    summary = stack.wait_for(profile, what=f"{user}'s profile to hold 8 events")["summary"]
    assert "posters" in summary["categories"]

    personal = stack.search_photo(query, "k=20&explain=true", headers=token).json()
    assert personal["personalized"] is True
    order = hit_ids(personal)
    assert order[0] == visual_order[0]  # visual similarity stays dominant at the top
    mean_rank = lambda ids, ranking: sum(ranking.index(i) for i in ids) / len(ids)  # noqa: E731
    shared_posters = [item for item in posters if item in order]
    assert mean_rank(shared_posters, order) < mean_rank(shared_posters, visual_order)
    assert any(set(hit["explain"]) - {"visual", "final"} for hit in personal["hits"])

    off = stack.search_photo(query, "k=20&personalize=false", headers=token).json()
    assert hit_ids(off) == visual_order

    assert stack.api("DELETE", f"/users/{user}/profile", headers=token).status == 200
    forgotten = stack.search_photo(query, "k=20", headers=token).json()
    assert forgotten["personalized"] is False
    assert hit_ids(forgotten) == visual_order


def test_only_a_valid_shopper_token_personalises_or_erases(stack: StackClient) -> None:
    """The API key is in the page; the user comes from the token the shop's backend signed, and nothing else."""
    from catalens.service.shopper_tokens import mint

    user, other = f"e2e-token-{uuid.uuid4().hex[:6]}", f"e2e-other-{uuid.uuid4().hex[:6]}"
    query = photo_bytes(31, base="coffee.png")
    key = (stack.data_dir / "shopper-token-key").read_text().strip()  # the local stack's SecureString value
    expired = {"X-Shopper-Token": mint(user, key, ttl_seconds=60, now=time.time() - 3600)}
    forged = {"X-Shopper-Token": mint(user, "not-this-stacks-key-" * 2)}
    cases = {
        "valid": (stack.shopper(user), "", 200, None),
        "valid, user_id matches": (stack.shopper(user), f"&user_id={user}", 200, None),
        "expired": (expired, "", 401, "token_expired"),
        "wrong signature": (forged, "", 401, "invalid_token"),
        "another user's token": (stack.shopper(other), f"&user_id={user}", 403, "token_user_mismatch"),
        "unsigned user_id": ({}, f"&user_id={user}", 401, "shopper_token_required"),
    }
    for case, (headers, extra, status, code) in cases.items():
        response = stack.search_photo(query, "k=3" + extra, headers=headers)
        assert response.status == status, (case, response.body)
        assert response.json().get("code") == code, case
        erase = stack.api("DELETE", f"/users/{user}/profile", headers=headers)
        assert (erase.status, erase.json().get("code")) == (status, code), (case, erase.body)
    preflight = stack.api("OPTIONS", "/search", key=False)
    assert "X-Shopper-Token" in preflight.headers["Access-Control-Allow-Headers"]


def test_catalens_token_signs_with_the_local_stacks_key(stack: StackClient) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "catalens_tools.cli", "token", "--user", "alice", "--ttl", "120",
         "--data-dir", str(stack.data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = {"X-Shopper-Token": result.stdout.strip()}
    answer = stack.search_photo(photo_bytes(32, base="coffee.png"), "k=3&user_id=alice", headers=token)
    assert answer.status == 200, answer.body


def test_invalid_shopper_events_are_refused_before_the_table(stack: StackClient) -> None:
    body = json.dumps({"user_id": "x", "type": "teleport", "item_id": "y"}).encode()
    response = stack.request("POST", "/local/events", body=body, content_type="application/json")
    assert response.status == 400
    assert "teleport" in response.json()["message"]
    assert stack.request("POST", "/local/events", body=body, content_type="application/json", key=False).status == 403


@pytest.mark.parametrize("path", ["/", "/app.js", "/style.css"])
def test_the_web_page_is_served_with_the_key_injected(stack: StackClient, path: str) -> None:
    response = stack.request("GET", path, key=False)
    assert response.status == 200
    if path == "/":
        assert stack.key.encode() in response.body
        assert b"__CATALENS_API_KEY__" not in response.body
