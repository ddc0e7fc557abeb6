"""The real search handler under moto: REST proxy events (recorded shape) in, API responses out.

The index holds a compacted snapshot plus fresh deltas, written through the same protocol ingest uses, with vectors
from the real embedder, so a photo query must find its own item first.
"""

from __future__ import annotations

import base64
import copy
import http.client
import io
import json
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import numpy as np
import pytest
import yaml
from hypothesis import given
from PIL import Image

from catalens.composition import index_store
from catalens.embedder import Embedder
from catalens.errors import ImageError
from catalens.imaging import load_and_preprocess
from catalens.index.records import ItemRecord
from catalens.service.errors import HTTP_STATUS
from catalens.service.ingest import item_id_for_key
from catalens.service.requests import LAMBDA_INVOKE_PAYLOAD_BYTES, MAX_QUERY_IMAGE_BYTES
from catalens.settings import Settings
from tests.unit.hostile_images import HANDLER_EXAMPLES, Hostile, hostile_photos
from tests.unit.imagefactory import encode, photo

EVENTS = Path(__file__).resolve().parents[1] / "events"
REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
CATEGORIES = ["shoes", "bags", "shoes", "hats", "bags", "shoes", "hats", "shoes"]


def jpeg(seed: int) -> bytes:
    return encode(photo(320, 240, seed=seed))


def closer_shot(photo_bytes: bytes) -> bytes:
    """A shopper-like photo of the same product: cropped to 80% around it (cosine ~0.90 to the original)."""
    from PIL import Image

    image = Image.open(io.BytesIO(photo_bytes)).convert("RGB")
    width, height = image.size
    buffer = io.BytesIO()
    image.crop((width // 10, height // 15, width * 9 // 10, height * 9 // 10)).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def rest_event(
    method: str,
    path: str,
    *,
    body: bytes | str | None = None,
    content_type: str | None = None,
    query: dict[str, str | list[str]] | None = None,
    base64_body: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A REST proxy event built from the recorded one (headers, request context), for ``method path``."""
    event = copy.deepcopy(json.loads((EVENTS / "apigw_search_image.json").read_text()))
    event["httpMethod"] = method
    event["path"] = path
    event["resource"] = path
    event["requestContext"]["httpMethod"] = method
    event["requestContext"]["path"] = "/prod" + path
    event["headers"] = {k: v for k, v in event["headers"].items() if k != "Content-Type"}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    if content_type:
        event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"]["Content-Type"] = [content_type]
    for name, value in (headers or {}).items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    query = query or {}
    event["queryStringParameters"] = {k: (v[-1] if isinstance(v, list) else v) for k, v in query.items()} or None
    event["multiValueQueryStringParameters"] = {
        k: (v if isinstance(v, list) else [v]) for k, v in query.items()
    } or None
    if isinstance(body, bytes) and base64_body:
        body = base64.b64encode(body).decode()
    elif isinstance(body, bytes):
        body = body.decode()
    event["body"] = body
    event["isBase64Encoded"] = base64_body
    return event


def shopper(user_id: str, *, ttl_seconds: int = 600, now: float | None = None, key: str | None = None) -> dict:
    """The X-Shopper-Token header the shop's backend would sign for ``user_id``, with the stack's key (in moto)."""
    from catalens.service.shopper_tokens import HEADER, mint

    if key is None:
        parameter = Settings.from_env().shopper_token_parameter  # set by function_env("SearchFunction")
        ssm = boto3.client("ssm", region_name=REGION)
        key = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    return {HEADER: mint(user_id, key, ttl_seconds=ttl_seconds, now=now)}


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder.from_dir(model_dir)


@pytest.fixture
def index_settings(template_stack: Any, function_env: Any, model_dir: Path) -> Settings:
    """template.yaml's resources in moto and the search function's environment from its template entry."""
    env = function_env("SearchFunction", CATALENS_MODEL_DIR=str(model_dir))
    return Settings(
        index_bucket=env["INDEX_BUCKET"],
        index_prefix=env["INDEX_PREFIX"],
        profiles_table=env["PROFILES_TABLE"],
        events_table=env["EVENTS_TABLE"],
    )


@pytest.fixture(scope="module")
def photos_and_vectors(embedder: Embedder) -> tuple[dict[str, bytes], Any]:
    photos = {f"sku-{i}": jpeg(100 + i) for i in range(8)}
    return photos, embedder.embed_images(list(photos.values()))


@pytest.fixture
def catalog(index_settings: Settings, embedder: Embedder, photos_and_vectors: tuple) -> dict[str, bytes]:
    """Eight items: six compacted into a snapshot, two still deltas (fresh uploads)."""
    store = index_store(index_settings, boto3.client("s3", region_name=REGION))
    photos, vectors = photos_and_vectors
    for position, ((item_id, _), vector) in enumerate(zip(photos.items(), vectors, strict=True)):
        fields = {"title": f"Item {position}", "price": 10.0 * (position + 1), "category": CATEGORIES[position]}
        fields["colour"] = "red" if position % 2 else "blue"
        record = ItemRecord(item_id, vector, fields, f"photos/{item_id}.jpg", f"etag-{position}", f"{position + 1:04X}")
        store.write_item(record, model_fingerprint=embedder.fingerprint)
        if position == 5:
            store.compact(model_fingerprint=embedder.fingerprint)
    return photos


@pytest.fixture
def call(index_settings: Settings, load_function: Any, lambda_context: Any) -> Any:
    module = load_function("search")

    def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        response = module.lambda_handler(event, lambda_context)
        if module.service.query_samples is not None:  # sample writes finish inside the test's moto
            module.service.query_samples.flush(timeout=30)
        body = response["body"]
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        headers |= {k.lower(): ",".join(v) for k, v in (response.get("multiValueHeaders") or {}).items()}
        assert headers.get("content-type", "").startswith("application/json")
        return response["statusCode"], json.loads(body), headers

    invoke.module = module  # type: ignore[attr-defined]
    return invoke


# ------------------------------------------------------------------------------------------------ happy paths


def test_raw_jpeg_query_finds_its_item_with_timings(catalog: dict[str, bytes], call: Any) -> None:
    event = json.loads((EVENTS / "apigw_search_image.json").read_text())
    event["body"] = base64.b64encode(catalog["sku-3"]).decode()
    status, body, headers = call(event)
    assert status == 200
    assert body["hits"][0]["item_id"] == "sku-3"
    assert body["hits"][0]["score"] > 0.99
    assert body["hits"][0]["image_key"] == "photos/sku-3.jpg"
    assert body["hits"][0]["fields"]["category"] == "hats"
    assert len(body["hits"]) == 5  # k from the query string
    assert body["item_count"] == 8
    assert set(body["timings_ms"]) >= {"decode", "embed", "search", "rank", "total"}
    assert body["timings_ms"]["embed"] > 0
    assert re.search(r"embed;dur=[\d.]+", headers["server-timing"])
    assert headers["x-catalens-index-version"] == body["index_version"]


def test_a_region_of_a_side_by_side_photo_finds_the_product_in_it(catalog: dict[str, bytes], call: Any) -> None:
    left, right = Image.open(io.BytesIO(catalog["sku-2"])), Image.open(io.BytesIO(catalog["sku-5"]))
    shelf = Image.new("RGB", (640, 240))
    shelf.paste(left, (0, 0))
    shelf.paste(right, (320, 0))
    body = encode(shelf, quality=95)
    found = {}
    for name, region in (("left", "0,0,320,240"), ("right", "0.5,0,1,1")):
        event = rest_event(
            "POST", "/search", body=body, content_type="image/jpeg", base64_body=True, query={"region": region}
        )
        status, answer, _ = call(event)
        assert status == 200, answer
        found[name] = answer["hits"][0]["item_id"]
        assert answer["query"]["region"]["source"] == "request"
        assert answer["query"]["region"]["image_size"] == [640, 240]
    assert found == {"left": "sku-2", "right": "sku-5"}
    as_json = json.dumps({"image": base64.b64encode(body).decode(), "region": [320, 0, 640, 240], "k": 1})
    status, answer, _ = call(rest_event("POST", "/search", body=as_json, content_type="application/json"))
    assert (status, answer["hits"][0]["item_id"], answer["query"]["region"]["box"]) == (
        200,
        "sku-5",
        [320, 0, 640, 240],
    )


def test_a_photo_answer_predicts_its_category_and_category_auto_filters_to_it(
    catalog: dict[str, bytes], call: Any
) -> None:
    photo_event = rest_event(
        "POST", "/search", body=catalog["sku-3"], content_type="image/jpeg", base64_body=True, query={"k": "8"}
    )
    status, answer, _ = call(photo_event)
    assert status == 200
    assert answer["category"]["name"] == "hats"  # sku-3's own category
    assert 0 < answer["category"]["confidence"] <= 1
    auto = rest_event(
        "POST",
        "/search",
        body=catalog["sku-3"],
        content_type="image/jpeg",
        base64_body=True,
        query={"category": "auto"},
    )
    status, answer, _ = call(auto)
    assert status == 200
    assert answer["query"]["category_filter"] == "hats"
    assert {hit["fields"]["category"] for hit in answer["hits"]} == {"hats"}
    status, similar, _ = call(rest_event("GET", "/items/sku-1/similar", query={"category": "auto"}))
    assert status == 200
    assert "category" not in similar
    assert {hit["fields"]["category"] for hit in similar["hits"]} == {CATEGORIES[1]}


def test_region_auto_names_the_box_it_searched(catalog: dict[str, bytes], call: Any) -> None:
    shelf = Image.new("RGB", (640, 480), (240, 240, 240))
    shelf.paste(Image.open(io.BytesIO(catalog["sku-4"])).resize((200, 150)), (220, 160))
    event = rest_event(
        "POST", "/search", body=encode(shelf), content_type="image/jpeg", base64_body=True, query={"region": "auto"}
    )
    status, answer, _ = call(event)
    assert status == 200
    region = answer["query"]["region"]
    assert region["source"] == "subject"
    left, top, right, bottom = region["box"]
    assert left <= 230
    assert top <= 170
    assert right >= 410
    assert bottom >= 300  # the pasted product, with a margin
    assert answer["hits"][0]["item_id"] == "sku-4"


def test_groups_find_two_products_placed_in_one_photo(catalog: dict[str, bytes], call: Any) -> None:
    shelf = Image.new("RGB", (800, 600), (128, 128, 128))
    # each product's centre square where a window lies (side 0.4 of 600 px, slid by half its side)
    for item_id, spot in (("sku-2", (0, 0)), ("sku-6", (560, 360))):
        product = Image.open(io.BytesIO(catalog[item_id]))
        shelf.paste(product.crop((40, 0, 280, 240)), spot)
    event = rest_event(
        "POST", "/search", body=encode(shelf), content_type="image/jpeg", base64_body=True, query={"groups": "2"}
    )
    status, answer, _ = call(event)
    assert status == 200, answer
    assert answer["timings_ms"]["groups"] > 0
    firsts = {group["hits"][0]["item_id"]: group["region"] for group in answer["groups"]}
    assert set(firsts) == {"sku-2", "sku-6"}
    assert firsts["sku-2"]["box"][0] < 400 < firsts["sku-6"]["box"][0]  # each list belongs to its own box
    assert all(group["region"]["source"] == "group" for group in answer["groups"])


@pytest.mark.parametrize("region", ["0,0,641,240", "0,0,20,240", "5,5,1,1", "left half", "0.5,0,0.5,1", "0,0,10e9,1"])
def test_a_bad_region_is_a_typed_400_and_the_next_search_is_served(
    catalog: dict[str, bytes], call: Any, region: str
) -> None:
    body = encode(photo(640, 240, seed=9))
    event = rest_event(
        "POST", "/search", body=body, content_type="image/jpeg", base64_body=True, query={"region": region}
    )
    status, answer, _ = call(event)
    assert (status, answer["code"]) == (400, "invalid_region")
    assert set(answer) == {"code", "message"}
    assert "region" in answer["message"]
    good = rest_event("POST", "/search", body=catalog["sku-1"], content_type="image/jpeg", base64_body=True)
    status, answer, _ = call(good)
    assert (status, answer["hits"][0]["item_id"]) == (200, "sku-1")
    assert answer["query"]["region"]["source"] == "full"


def test_delta_items_are_found_as_well_as_snapshot_items(catalog: dict[str, bytes], call: Any) -> None:
    for item_id in ("sku-1", "sku-7"):  # sku-7 is a delta written after the compaction
        status, body, _ = call(
            rest_event("POST", "/search", body=catalog[item_id], content_type="image/png", base64_body=True)
        )
        assert status == 200
        assert body["hits"][0]["item_id"] == item_id


def test_json_base64_and_multipart_queries_agree(catalog: dict[str, bytes], call: Any) -> None:
    as_json = json.dumps({"image": base64.b64encode(catalog["sku-2"]).decode(), "k": 3})
    _, by_json, _ = call(rest_event("POST", "/search", body=as_json, content_type="application/json"))
    boundary = "----catalens"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + catalog["sku-2"]
        + f"\r\n--{boundary}--\r\n".encode()
    )
    _, by_form, _ = call(
        rest_event(
            "POST", "/search", body=form, content_type=f"multipart/form-data; boundary={boundary}", base64_body=True
        )
    )
    assert [h["item_id"] for h in by_json["hits"]] == [h["item_id"] for h in by_form["hits"]]
    assert by_json["hits"][0]["item_id"] == "sku-2"
    assert len(by_json["hits"]) == 3


def test_more_like_this_excludes_the_item(catalog: dict[str, bytes], call: Any) -> None:
    status, body, _ = call(
        rest_event("POST", "/search", body='{"item_id": "sku-4", "k": 7}', content_type="application/json")
    )
    assert status == 200
    ids = [h["item_id"] for h in body["hits"]]
    assert "sku-4" not in ids
    assert len(ids) == 7
    _, similar, _ = call(rest_event("GET", "/items/sku-4/similar", query={"k": "7"}))
    assert [h["item_id"] for h in similar["hits"]] == ids


def test_filters_and_paging(catalog: dict[str, bytes], call: Any) -> None:
    query = {"category": "shoes", "price_max": "65", "k": "10"}
    status, body, _ = call(
        rest_event("POST", "/search", body=catalog["sku-0"], content_type="image/jpeg", base64_body=True, query=query)
    )
    assert status == 200
    assert {h["item_id"] for h in body["hits"]} == {"sku-0", "sku-2", "sku-5"}  # shoes priced <= 65
    _, coloured, _ = call(rest_event("GET", "/items/sku-0/similar", query={"filter.colour": "red"}))
    assert coloured["hits"]
    assert all(h["fields"]["colour"] == "red" for h in coloured["hits"])
    _, page1, _ = call(rest_event("GET", "/items/sku-0/similar", query={"k": "3"}))
    _, page2, _ = call(rest_event("GET", "/items/sku-0/similar", query={"k": "3", "offset": "3"}))
    _, whole, _ = call(rest_event("GET", "/items/sku-0/similar", query={"k": "6"}))
    assert [h["item_id"] for h in page1["hits"] + page2["hits"]] == [h["item_id"] for h in whole["hits"]]


def test_explain_shows_the_score_breakdown(catalog: dict[str, bytes], call: Any) -> None:
    _, body, _ = call(rest_event("GET", "/items/sku-1/similar", query={"explain": "true", "k": "2"}))
    for hit in body["hits"]:
        assert hit["explain"]["visual"] == pytest.approx(hit["score"], abs=1e-5)
    _, plain, _ = call(rest_event("GET", "/items/sku-1/similar", query={"k": "2"}))
    assert "explain" not in plain["hits"][0]


def test_get_item_and_health(catalog: dict[str, bytes], call: Any) -> None:
    status, item, _ = call(rest_event("GET", "/items/sku-6"))
    assert status == 200
    assert item["fields"]["title"] == "Item 6"
    assert item["image_key"] == "photos/sku-6.jpg"
    status, health, _ = call(rest_event("GET", "/health"))
    assert status == 200
    assert health["item_count"] == 8
    assert health["index_version"] == item["index_version"]
    assert health["model"]["fingerprint"]


# Ids as ingest derives them from catalog keys: spaces, folders, non-ASCII, '%' and '+', and an id whose last
# folder is called "similar" (it must not be taken for the /similar route).
CATALOG_KEYS = [
    "photos/red shoe.jpg",
    "photos/shoes/sku-1.final.png",
    "photos/kitchen/10 ÷ 2 = 5.jpg",
    "photos/100% wool+silk.webp",
    "photos/café/crème brûlée.jpg",
    "photos/shoes/similar.jpg",
]


def item_event(item_id: str, suffix: str = "", *, path_parameters: bool = True) -> dict[str, Any]:
    """``GET /items/{id}[suffix]`` as API Gateway REST delivers it: ``path`` percent-encoded as the client sent
    it (encodeURIComponent, so ``/`` is ``%2F``), ``pathParameters`` decoded, ``resource`` the template's."""
    event = rest_event("GET", f"/items/{quote(item_id, safe='')}{suffix}")
    event["resource"] = event["requestContext"]["resourcePath"] = "/items/{id}" + suffix
    event["pathParameters"] = {"id": item_id} if path_parameters else None
    return event


@pytest.fixture
def catalog_ids(index_settings: Settings, embedder: Embedder) -> list[str]:
    """One item per key of CATALOG_KEYS, ids derived as ingest derives them, plus a neighbour for /similar."""
    store = index_store(index_settings, boto3.client("s3", region_name=REGION))
    ids = [item_id_for_key(key, "photos/") for key in CATALOG_KEYS]
    vectors = embedder.embed_images([jpeg(200 + n) for n in range(len(ids))])
    for n, (item_id, key, vector) in enumerate(zip(ids, CATALOG_KEYS, vectors, strict=True)):
        record = ItemRecord(item_id, vector, {"title": key}, key, f"etag-{n}", f"{n + 1:04X}")
        store.write_item(record, model_fingerprint=embedder.fingerprint)
    return ids


@pytest.mark.parametrize("path_parameters", [True, False], ids=["pathParameters", "path-only"])
def test_every_id_ingest_makes_is_reachable(catalog_ids: list[str], call: Any, path_parameters: bool) -> None:
    for item_id in catalog_ids:
        status, item, _ = call(item_event(item_id, path_parameters=path_parameters))
        assert (status, item.get("item_id")) == (200, item_id), item
        status, similar, _ = call(item_event(item_id, "/similar", path_parameters=path_parameters))
        assert status == 200, similar
        assert similar["query"]["item_id"] == item_id
        assert item_id not in {hit["item_id"] for hit in similar["hits"]}
        assert len(similar["hits"]) == len(catalog_ids) - 1


def test_a_raw_non_ascii_path_segment_is_matched_too(catalog_ids: list[str], call: Any) -> None:
    """A client that sends UTF-8 unencoded: the segment still matches the route (it used to be 404 not_found)."""
    item_id = item_id_for_key(CATALOG_KEYS[2], "photos/").replace("/", "%2F")
    event = rest_event("GET", f"/items/{item_id}")
    status, item, _ = call(event)
    assert (status, item.get("item_id")) == (200, "kitchen/10 ÷ 2 = 5"), item


def test_ids_reach_the_handler_through_the_local_gateway(
    catalog_ids: list[str], template_stack: Any, call: Any, lambda_context: Any
) -> None:
    """The local gateway (template's routes) in front of the real handler, over HTTP as a browser calls it."""
    from catalens_tools.local.gateway import ApiConfig, Gateway, Route
    from catalens_tools.provision import api_spec

    api = api_spec(template_stack)
    routes = [Route(r.method, r.path, r.api_key_required) for r in api.routes]
    config = ApiConfig(routes=routes, binary_media_types=api.binary_media_types, stage=api.stage, api_key="k3y")
    gateway = Gateway(config, lambda event: call.module.lambda_handler(event, lambda_context), port=0)
    gateway.start()
    try:
        for item_id in catalog_ids:
            for suffix in ("", "/similar"):
                target = f"/api/items/{quote(item_id, safe='')}{suffix}"
                status, body = http_get(gateway.port, target.encode())
                assert status == 200, (target, body)
                assert (body.get("item_id") or body["query"]["item_id"]) == item_id
        # UTF-8 bytes sent unencoded on the request line (curl does this) name the same item
        raw = "/api/items/kitchen%2F10 ÷ 2 = 5".replace(" ", "%20").encode("utf-8")
        assert http_get(gateway.port, raw) == (200, call(item_event("kitchen/10 ÷ 2 = 5"))[1])
    finally:
        gateway.stop()


def http_get(port: int, target: bytes) -> tuple[int, dict[str, Any]]:
    """A GET with the request target sent byte for byte (http.client would refuse non-ASCII)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: local\r\nx-api-key: k3y\r\nConnection: close\r\n\r\n"
        )
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, json.loads(response.read())


def test_empty_index_answers_200_with_no_hits(index_settings: Settings, call: Any) -> None:
    status, body, _ = call(rest_event("POST", "/search", body=jpeg(1), content_type="image/jpeg", base64_body=True))
    assert (status, body["hits"], body["item_count"]) == (200, [], 0)
    assert call(rest_event("GET", "/health"))[1]["item_count"] == 0


def test_profile_erasure_is_idempotent(index_settings: Settings, call: Any) -> None:
    for _ in range(2):
        status, body, _ = call(rest_event("DELETE", "/users/alice/profile", headers=shopper("alice")))
        assert status == 200
        assert body["user_id"] == "alice"


def test_openapi_document_is_served(index_settings: Settings, call: Any) -> None:
    status, body, _ = call(rest_event("GET", "/openapi.json"))
    assert status == 200
    assert body["openapi"].startswith("3.")
    assert "/search" in body["paths"]
    assert body["servers"] == [{"url": "/prod"}], "the stage the request came in through"


def test_openapi_servers_follow_the_path_the_api_is_served_under(index_settings: Settings, call: Any) -> None:
    local = rest_event("GET", "/openapi.json")
    local["requestContext"]["path"] = "/api/openapi.json"  # the local gateway serves the API under /api
    assert call(local)[1]["servers"] == [{"url": "/api"}]
    custom_domain = rest_event("GET", "/openapi.json")
    custom_domain["requestContext"]["path"] = "/openapi.json"
    assert call(custom_domain)[1]["servers"] == [{"url": "/"}]


def emf_documents(out: str) -> list[dict[str, Any]]:
    """The CloudWatch EMF documents a handler printed: {metric: value list, dimension: value, ...} each."""
    documents = []
    for line in out.splitlines():
        if line.startswith('{"_aws"'):
            document = json.loads(line)
            (directive,) = document["_aws"]["CloudWatchMetrics"]
            names = [m["Name"] for m in directive["Metrics"]] + [d for ds in directive["Dimensions"] for d in ds]
            documents.append({name: document[name] for name in names})
    return documents


def test_each_request_publishes_one_metrics_document(
    catalog: dict[str, bytes], call: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    call(rest_event("POST", "/search", body=catalog["sku-1"], content_type="image/jpeg", base64_body=True))
    (photo_search,) = emf_documents(capsys.readouterr().out)
    assert photo_search["kind"] == "photo"
    assert photo_search["Searches"] == [1.0]
    assert photo_search["SearchHits"] == [8.0]  # k=12 over 8 items
    assert photo_search["SearchMs"][0] > 0

    call(rest_event("GET", "/items/sku-1/similar", query={"k": "3"}))
    (item_search,) = emf_documents(capsys.readouterr().out)
    assert (item_search["kind"], item_search["Searches"], item_search["SearchHits"]) == ("item", [1.0], [3.0])

    call(rest_event("GET", "/items/sku-1/similar", query={"k": "0"}))
    call(rest_event("GET", "/items/nope"))
    errors = emf_documents(capsys.readouterr().out)
    assert [(d["code"], d["ClientErrors"]) for d in errors] == [("invalid_parameter", [1.0]), ("item_not_found", [1.0])]
    assert all("kind" not in d and "Searches" not in d for d in errors)


def test_a_bug_answers_500_and_counts_a_server_error(
    index_settings: Settings, call: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(call.module.service, "health", broken)
    capsys.readouterr()
    status, body, _ = call(rest_event("GET", "/health"))
    assert (status, body["code"]) == (500, "internal_error")
    (document,) = emf_documents(capsys.readouterr().out)
    assert (document["ServerErrors"], document["code"]) == ([1.0], "internal_error")


# ------------------------------------------------------------------------------------------------ query domain


def index_objects(settings: Settings, prefix: str) -> list[str]:
    s3 = boto3.client("s3", region_name=REGION)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.index_bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_photo_queries_leave_a_sample_of_their_embedding_and_nothing_else(
    catalog: dict[str, bytes], call: Any, index_settings: Settings, embedder: Embedder, photos_and_vectors: tuple
) -> None:
    sampler = call.module.service.query_samples
    assert sampler is not None
    assert sampler.rate == 0.25  # the template's QuerySampleRate default
    sampler.rate = 1.0  # every photo query, for the test
    samples_prefix = index_settings.index_prefix + "queries/samples/"

    shopper_photo = closer_shot(catalog["sku-3"])
    status, _, _ = call(rest_event("POST", "/search", body=shopper_photo, content_type="image/jpeg",
                                   base64_body=True, headers=shopper("shopper-42")))  # fmt: skip
    assert status == 200
    call(rest_event("GET", "/items/sku-3/similar"))  # an item query is no shopper's photo
    call(rest_event("POST", "/search", body='{"item_id": "sku-3"}', content_type="application/json"))
    _, copy, _ = call(rest_event("POST", "/search", body=catalog["sku-3"], content_type="image/jpeg",
                                 base64_body=True))  # fmt: skip
    assert copy["query"]["catalog_copy"] == "sku-3"  # the shop's own photo: not a shopper's either

    (key,) = index_objects(index_settings, samples_prefix)
    assert key.startswith(f"{samples_prefix}{embedder.fingerprint[:16]}/")
    assert "shopper-42" not in key
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=index_settings.index_bucket, Key=key)["Body"]
    sample = np.load(io.BytesIO(body.read()), allow_pickle=False)
    assert (sample.dtype, sample.shape) == (np.float16, (embedder.dim,))  # the embedding alone
    np.testing.assert_allclose(sample, embedder.embed_images([shopper_photo])[0], atol=2e-3)


def test_photo_queries_are_calibrated_once_the_builder_made_a_query_domain(
    catalog: dict[str, bytes], call: Any, index_settings: Settings, embedder: Embedder, photos_and_vectors: tuple
) -> None:
    """Samples in, the builder's refresh, then the handler's IndexCache/IndexView serve calibrated photo queries."""
    store = index_store(index_settings, boto3.client("s3", region_name=REGION))
    rng = np.random.default_rng(0)
    vectors = photos_and_vectors[1]
    for n in range(40):  # shoppers' photos near catalog items: the catalog vectors, disturbed
        noisy = vectors[n % len(vectors)] + 0.05 * rng.normal(size=vectors.shape[1])
        store.queries.write_query_sample(noisy / np.linalg.norm(noisy), model_fingerprint=embedder.fingerprint)
    entry = store.queries.refresh_query_domain()
    assert entry is not None
    assert entry.count == 40

    def search(photo: bytes = closer_shot(catalog["sku-5"]), **query: str) -> dict[str, Any]:
        event = rest_event("POST", "/search", body=photo, content_type="image/jpeg", base64_body=True,
                           query={"k": "8", "explain": "true", **query})  # fmt: skip
        status, body, _ = call(event)
        assert status == 200, body
        return body

    calibrated, plain = search(), search(calibrate="false")
    assert plain["hits"][0]["score"] < embedder.card.copy_cosine  # a shopper's photo, not a copy of the shop's
    assert (calibrated["calibrated"], plain["calibrated"]) == (True, False)
    raw = {hit["item_id"]: hit["score"] for hit in plain["hits"]}
    assert {hit["item_id"] for hit in calibrated["hits"]} == set(raw)  # all 8 items, re-scored
    for hit in calibrated["hits"]:
        assert hit["explain"]["raw"] == pytest.approx(raw[hit["item_id"]], abs=1e-5)
        assert hit["score"] == pytest.approx(hit["explain"]["centred"] - hit["explain"]["hubness"], abs=1e-5)
    assert [h["score"] for h in calibrated["hits"]] == sorted((h["score"] for h in calibrated["hits"]), reverse=True)
    assert calibrated["hits"][0]["item_id"] == "sku-5"  # its product still wins
    copy = search(catalog["sku-5"])  # the shop's own photo: in the catalog's domain, searched plain cosine
    assert (copy["calibrated"], copy["query"]["catalog_copy"], copy["hits"][0]["item_id"]) == (False, "sku-5", "sku-5")
    _, similar, _ = call(rest_event("GET", "/items/sku-5/similar", query={"explain": "true"}))
    assert similar["calibrated"] is False  # more like this stays plain cosine
    assert all("hubness" not in hit["explain"] for hit in similar["hits"])


# ------------------------------------------------------------------------------------------------ malformed requests


@pytest.mark.parametrize(
    ("event", "status", "code"),
    [
        (
            rest_event("POST", "/search", body='{"image": "%%%"}', content_type="application/json"),
            400,
            "invalid_base64",
        ),
        (rest_event("POST", "/search", body=b"hello", content_type="text/plain"), 415, "unsupported_media_type"),
        (
            rest_event("POST", "/search", body=b"plain text", content_type="image/jpeg", base64_body=True),
            400,
            "not_an_image",
        ),
        (
            rest_event("POST", "/search", body='{"item_id": "nope"}', content_type="application/json"),
            404,
            "item_not_found",
        ),
        (
            rest_event("POST", "/search", body='{"item_id": "sku-1", "k": 0}', content_type="application/json"),
            400,
            "invalid_parameter",
        ),
        (
            rest_event("POST", "/search", body='{"item_id": "sku-1", "k": 101}', content_type="application/json"),
            400,
            "invalid_parameter",
        ),
        (
            rest_event("POST", "/search", body='{"image": "/9j/AAAA", "groups": 6}', content_type="application/json"),
            400,
            "invalid_parameter",
        ),
        (
            rest_event("POST", "/search", body='{"item_id": "sku-1", "groups": 2}', content_type="application/json"),
            400,
            "invalid_parameter",
        ),
        (
            rest_event(
                "POST",
                "/search",
                body='{"item_id": "sku-1", "category": ["auto", "hats"]}',
                content_type="application/json",
            ),
            400,
            "invalid_filter",
        ),
        (
            rest_event(
                "POST",
                "/search",
                body='{"item_id": "sku-1", "filters": {"size": "M"}}',
                content_type="application/json",
            ),
            400,
            "unknown_filter",
        ),
        (rest_event("POST", "/search", body="{", content_type="application/json"), 400, "invalid_json"),
        (rest_event("GET", "/items/nope"), 404, "item_not_found"),
        (rest_event("GET", "/items/nope/similar"), 404, "item_not_found"),
        (rest_event("GET", "/items/sku-1/similar", query={"k": "many"}), 400, "invalid_parameter"),
        (rest_event("GET", "/nowhere"), 404, "not_found"),
        (rest_event("PUT", "/search"), 405, "method_not_allowed"),
    ],
)
def test_malformed_requests_get_4xx_json(
    catalog: dict[str, bytes], call: Any, event: dict, status: int, code: str
) -> None:
    got_status, body, _ = call(event)
    assert (got_status, body["code"]) == (status, code)
    assert body["message"]


def test_oversized_image_is_413(catalog: dict[str, bytes], call: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    big = b"\xff\xd8\xff" + bytes(11 * 1024 * 1024)
    status, body, _ = call(rest_event("POST", "/search", body=big, content_type="image/jpeg", base64_body=True))
    assert (status, body["code"]) == (413, "payload_too_large")


def test_the_photo_limit_is_one_number_that_fits_a_lambda_invoke(catalog: dict[str, bytes], call: Any) -> None:
    limit = call.module.service.limits.max_bytes
    assert limit == MAX_QUERY_IMAGE_BYTES
    over = b"\xff\xd8\xff" + bytes(limit - 2)  # one byte over, sent raw, as JSON and as a form
    raw = rest_event("POST", "/search", body=over, content_type="image/jpeg", base64_body=True)
    as_json = rest_event(
        "POST", "/search", body=json.dumps({"image": base64.b64encode(over).decode()}), content_type="application/json"
    )
    for event in (raw, as_json):
        # the largest request API Gateway could hand over still fits Lambda's 6 MB invoke payload
        assert len(json.dumps(event)) < LAMBDA_INVOKE_PAYLOAD_BYTES
        status, body, _ = call(event)
        assert (status, body["code"]) == (413, "image_too_large")
        assert f"the limit is {limit}" in body["message"]


@pytest.mark.parametrize("content_type", ["image/gif", "image/jpg", "image/pjpeg", "application/octet-stream"])
def test_every_accepted_photo_type_is_a_binary_media_type_and_is_searched(
    catalog: dict[str, bytes], call: Any, content_type: str
) -> None:
    photo_bytes = catalog["sku-3"]
    if content_type == "image/gif":
        photo_bytes = encode(Image.open(io.BytesIO(photo_bytes)).convert("RGB"), "GIF")
    event = rest_event("POST", "/search", body=photo_bytes, content_type=content_type, base64_body=True)
    status, body, _ = call(event)
    assert status == 200, body
    assert body["hits"][0]["item_id"] == "sku-3"
    assert content_type.replace("/", "~1") in template_binary_media_types()


def test_a_photo_that_exhausts_memory_is_a_413_not_a_500(
    catalog: dict[str, bytes], call: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(batch: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(call.module.service.embedder, "embed", exhausted)
    event = rest_event("POST", "/search", body=catalog["sku-1"], content_type="image/jpeg", base64_body=True)
    status, body, _ = call(event)
    assert (status, body["code"]) == (413, "image_too_complex")


HTTP_API_EVENT = {
    "version": "2.0", "routeKey": "POST /search", "rawPath": "/search", "rawQueryString": "",
    "headers": {"content-type": "application/json"}, "body": '{"item_id": "sku-1"}', "isBase64Encoded": False,
    "requestContext": {"http": {"method": "POST", "path": "/search"}, "requestId": "r-1", "stage": "$default"},
}  # fmt: skip


@pytest.mark.parametrize("event", [HTTP_API_EVENT, {}, [], "x", None, {"httpMethod": "GET"}])
def test_an_event_of_another_shape_gets_a_json_error_not_a_crash(
    index_settings: Settings, call: Any, event: Any
) -> None:
    status, body, _ = call(event)
    assert (status, body["code"]) == (400, "unsupported_event")
    assert "REST" in body["message"]


# ------------------------------------------------------------------------------------------------ contract


def resolver_routes(app: Any) -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every route the Powertools resolver serves."""
    routes = set()
    for route in app._static_routes + app._dynamic_routes:
        routes.add((route.method.upper(), re.sub(r"<(\w+)>", r"{\1}", route.path)))
    return routes


def openapi_routes() -> set[tuple[str, str]]:
    document = json.loads((REPO / "shared" / "catalens" / "data" / "openapi.json").read_text())
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def load_template() -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((REPO / "template.yaml").read_text(), Loader=Loader)


def template_binary_media_types() -> list[str]:
    return load_template()["Resources"]["SearchApi"]["Properties"]["BinaryMediaTypes"]


def template_routes() -> set[tuple[str, str]]:
    template = load_template()
    events = template["Resources"]["SearchFunction"]["Properties"]["Events"]
    return {(e["Properties"]["Method"].upper(), e["Properties"]["Path"]) for e in events.values() if e["Type"] == "Api"}


def test_resolver_routes_match_the_openapi_document_and_the_template(index_settings: Settings, call: Any) -> None:
    served = resolver_routes(call.module.app)
    assert served == openapi_routes()
    assert served == template_routes()


# ------------------------------------------------------------------------------------------------ personalisation


def test_personalised_search_and_profile_erasure(
    catalog: dict[str, bytes], index_settings: Settings, load_function: Any, lambda_context: Any
) -> None:
    import time

    from catalens.adapters.dynamodb import DynamoProfileStore
    from catalens.index.cache import IndexCache
    from catalens.profiles import ProfileUpdater, index_lookup
    from catalens.profiles.events import ShopperEvent

    dynamodb = boto3.client("dynamodb", region_name=REGION)
    view = IndexCache(index_store(index_settings, boto3.client("s3", region_name=REGION)), background=False).view
    store = DynamoProfileStore(dynamodb, index_settings.profiles_table)  # the template's table
    updater = ProfileUpdater(store=store, lookup=index_lookup(view))
    now = int(time.time() * 1000)
    for n, item_id in enumerate(["sku-3", "sku-6", "sku-3", "sku-6", "sku-3"] * 3):  # alice buys hats
        updater.handle(ShopperEvent("alice", f"e{n}", now - 1000 * n, "purchase", item_id))
    module = load_function("search")

    def search(user: str | None = None, **query: str) -> dict[str, Any]:
        event = rest_event("GET", "/items/sku-0/similar", query={"k": "7", "explain": "true", **query},
                           headers=shopper(user) if user else None)  # fmt: skip
        response = module.lambda_handler(event, lambda_context)
        assert response["statusCode"] == 200, response["body"]
        return json.loads(response["body"])

    personal = search("alice")
    assert personal["personalized"] is True
    assert all("boost" in hit["explain"] for hit in personal["hits"])
    plain = [(hit["item_id"], hit["score"]) for hit in search()["hits"]]
    for opted_out_or_cold in (search("alice", personalize="false"), search("nobody")):
        assert opted_out_or_cold["personalized"] is False
        assert [(hit["item_id"], hit["score"]) for hit in opted_out_or_cold["hits"]] == plain  # exactly plain

    erased = module.lambda_handler(
        rest_event("DELETE", "/users/alice/profile", headers=shopper("alice")), lambda_context
    )
    assert (erased["statusCode"], json.loads(erased["body"])["deleted"]) == (200, True)
    after = search("alice")
    assert after["personalized"] is False
    assert [(hit["item_id"], hit["score"]) for hit in after["hits"]] == plain
    later = int(time.time() * 1000) + 1000  # new events, after the erasure, start a new profile
    for n in range(15):
        updater.handle(ShopperEvent("alice", f"new{n}", later + n, "purchase", ["sku-3", "sku-6"][n % 2]))
    assert search("alice")["personalized"] is True


# ------------------------------------------------------------------------------------------------ shopper tokens


@pytest.fixture
def alice_likes_hats(catalog: dict[str, bytes], index_settings: Settings) -> None:
    """alice has a profile (hats) in the template's profiles table, built by the real updater."""
    import time

    from catalens.adapters.dynamodb import DynamoProfileStore
    from catalens.index.cache import IndexCache
    from catalens.profiles import ProfileUpdater, index_lookup
    from catalens.profiles.events import ShopperEvent

    view = IndexCache(index_store(index_settings, boto3.client("s3", region_name=REGION)), background=False).view
    store = DynamoProfileStore(boto3.client("dynamodb", region_name=REGION), index_settings.profiles_table)
    updater = ProfileUpdater(store=store, lookup=index_lookup(view))
    now = int(time.time() * 1000)
    for n, item_id in enumerate(["sku-3", "sku-6"] * 8):
        updater.handle(ShopperEvent("alice", f"e{n}", now - 1000 * n, "purchase", item_id))


def alice_has_a_profile(index_settings: Settings) -> bool:
    from catalens.adapters.dynamodb import DynamoProfileStore

    store = DynamoProfileStore(boto3.client("dynamodb", region_name=REGION), index_settings.profiles_table)
    profile = store.load("alice")
    return profile is not None and not profile.is_empty


def tampered(header: dict[str, str], user_id: str) -> dict[str, str]:
    """alice's token with its payload rewritten to name ``user_id`` (the signature left as it was)."""
    ((name, token),) = header.items()
    version, _, signature = token.split(".")
    claims = json.dumps({"exp": int(__import__("time").time()) + 600, "sub": user_id}, separators=(",", ":"))
    return {name: f"{version}.{base64.urlsafe_b64encode(claims.encode()).rstrip(b'=').decode()}.{signature}"}


def test_a_valid_shopper_token_personalises_photo_and_item_searches(alice_likes_hats: None, call: Any) -> None:
    photo = rest_event("POST", "/search", body='{"item_id": "sku-0", "k": 5}', content_type="application/json",
                       headers=shopper("alice"))  # fmt: skip
    status, body, _ = call(photo)
    assert (status, body["personalized"]) == (200, True)
    named = rest_event("GET", "/items/sku-0/similar", query={"user_id": "alice"}, headers=shopper("alice"))
    assert call(named)[1]["personalized"] is True  # a user_id that matches the token's is fine
    assert call(rest_event("GET", "/items/sku-0/similar"))[1]["personalized"] is False  # anonymous: visual order


BAD_TOKENS = {  # case -> (headers for a request about alice, status, code)
    "expired": (lambda: shopper("alice", ttl_seconds=60, now=__import__("time").time() - 3600), 401, "token_expired"),
    "wrong signature": (lambda: shopper("alice", key="another-deployment-" * 3), 401, "invalid_token"),
    "tampered payload": (lambda: tampered(shopper("mallory"), "alice"), 401, "invalid_token"),
    "another user's token": (lambda: shopper("bob"), 403, "token_user_mismatch"),
    "unsigned user_id": (lambda: {}, 401, "shopper_token_required"),
    "garbage": (lambda: {"X-Shopper-Token": "alice"}, 401, "invalid_token"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_shopper_tokens_neither_personalise_nor_erase(
    alice_likes_hats: None, call: Any, index_settings: Settings, case: str
) -> None:
    make_headers, status, code = BAD_TOKENS[case]
    requests = [
        rest_event("POST", "/search", body='{"item_id": "sku-0", "user_id": "alice"}',
                   content_type="application/json", headers=make_headers()),
        rest_event("GET", "/items/sku-0/similar", query={"user_id": "alice"}, headers=make_headers()),
        rest_event("DELETE", "/users/alice/profile", headers=make_headers()),
    ]  # fmt: skip
    for event in requests:
        got_status, body, _ = call(event)
        assert (got_status, body["code"]) == (status, code), (event["httpMethod"], event["path"], body)
        assert body["message"]
    assert alice_has_a_profile(index_settings)  # nothing was erased


def test_unsigned_user_ids_are_accepted_only_when_the_deployment_trusts_its_callers(
    alice_likes_hats: None,
    index_settings: Settings,
    function_env: Any,
    load_function: Any,
    lambda_context: Any,
    model_dir: Path,
) -> None:
    # what the template parameter TrustUnsignedUserIds=true sets
    function_env("SearchFunction", TRUST_UNSIGNED_USER_IDS="true", CATALENS_MODEL_DIR=str(model_dir))
    module = load_function("search")

    def call_trusted(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = module.lambda_handler(event, lambda_context)
        return response["statusCode"], json.loads(response["body"])

    status, body = call_trusted(rest_event("GET", "/items/sku-0/similar", query={"user_id": "alice"}))
    assert (status, body["personalized"]) == (200, True)
    mismatch = rest_event("DELETE", "/users/alice/profile", headers=shopper("bob"))
    assert call_trusted(mismatch)[1]["code"] == "token_user_mismatch"  # a token still has to be for that user
    assert alice_has_a_profile(index_settings)
    assert call_trusted(rest_event("DELETE", "/users/alice/profile")) == (200, {"user_id": "alice", "deleted": True})
    assert not alice_has_a_profile(index_settings)


def test_gateway_errors_share_the_apis_json_shape_and_its_photo_limit() -> None:
    responses = load_template()["Resources"]["SearchApi"]["Properties"]["GatewayResponses"]
    for kind in ("INVALID_API_KEY", "MISSING_AUTHENTICATION_TOKEN", "REQUEST_TOO_LARGE", "THROTTLED", "QUOTA_EXCEEDED"):
        template = responses[kind]["ResponseTemplates"]["application/json"]
        shape = json.loads(template.replace("$context.error.messageString", '"from API Gateway"'))
        assert set(shape) == {"code", "message"}, kind
    statuses = {kind: responses[kind]["StatusCode"] for kind in ("INVALID_API_KEY", "REQUEST_TOO_LARGE", "THROTTLED")}
    assert statuses == {"INVALID_API_KEY": "403", "REQUEST_TOO_LARGE": "413", "THROTTLED": "429"}
    assert str(MAX_QUERY_IMAGE_BYTES) in responses["REQUEST_TOO_LARGE"]["ResponseTemplates"]["application/json"]


def test_the_document_asks_for_the_key_wherever_the_template_does() -> None:
    document = json.loads((REPO / "shared" / "catalens" / "data" / "openapi.json").read_text())
    assert document["security"] == [{"ApiKey": []}]
    assert load_template()["Resources"]["SearchApi"]["Properties"]["Auth"]["ApiKeyRequired"] is True
    exempt = [f"{m.upper()} {p}" for p, item in document["paths"].items() for m, op in item.items() if "security" in op]
    assert exempt == [], "every method of the API needs the key (ApiKeyRequired applies to all of them)"


# ------------------------------------------------------------------------------------------------ hostile photos


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the pixel check refuses them next
@HANDLER_EXAMPLES
@given(photo=hostile_photos())
def test_any_hostile_photo_query_is_answered_200_or_a_typed_4xx(
    catalog: dict[str, bytes], call: Any, photo: Hostile
) -> None:
    service = call.module.service
    try:
        load_and_preprocess(photo.data, service.embedder.card.preprocess, service.limits)
        expected = None
    except ImageError as exc:
        expected = exc.code
    event = rest_event("POST", "/search", body=photo.data, content_type="application/octet-stream", base64_body=True)

    status, body, _ = call(event)  # any exception in the handler fails the property

    if expected is None:
        assert status == 200, (photo, body)
        assert body["hits"]
        assert body["item_count"] == 8
    else:
        assert (status, body["code"]) == (HTTP_STATUS[expected], expected), photo
        assert 400 <= status < 500
        assert body["message"]


# ------------------------------------------------------------------------------------------------ words


def test_words_search_by_get_and_post_with_filters_and_fresh_items(catalog: dict[str, bytes], call: Any) -> None:
    status, body, _ = call(rest_event("GET", "/search", query={"q": "item 6", "k": "3", "explain": "true"}))
    assert status == 200, body
    assert body["query"] == {"type": "text", "q": "item 6"}
    assert body["hits"][0]["item_id"] == "sku-6"  # a fresh delta, not yet compacted
    assert body["hits"][0]["explain"]["text"] > 0
    posted = call(
        rest_event("POST", "/search", body=json.dumps({"q": "item 6", "k": 3}), content_type="application/json")
    )
    assert [h["item_id"] for h in posted[1]["hits"]] == [h["item_id"] for h in body["hits"]]
    status, hats, _ = call(rest_event("GET", "/search", query={"q": "item", "category": "hats", "k": "10"}))
    assert status == 200
    assert {h["item_id"] for h in hats["hits"]} == {"sku-3", "sku-6"}


def test_words_beside_a_photo_are_fused_and_explained(catalog: dict[str, bytes], call: Any) -> None:
    payload = {"image": base64.b64encode(catalog["sku-3"]).decode(), "q": "item 3", "explain": True, "k": 3}
    status, body, _ = call(rest_event("POST", "/search", body=json.dumps(payload), content_type="application/json"))
    assert status == 200, body
    assert body["hits"][0]["item_id"] == "sku-3"
    assert set(body["hits"][0]["explain"]) >= {"visual", "text", "text_share", "fused"}
    assert body["query"]["q"] == "item 3"


@pytest.mark.parametrize(
    "query", [{}, {"q": ""}, {"q": "..."}, {"q": "x" * 201}, {"q": "item", "k": "0"}, {"q": "item", "groups": "2"}]
)
def test_a_bad_text_query_is_a_400_and_the_next_one_is_served(
    catalog: dict[str, bytes], call: Any, query: dict[str, str]
) -> None:
    status, body, _ = call(rest_event("GET", "/search", query=query))
    assert status == 400
    assert body["code"] in {"missing_query", "invalid_query", "invalid_parameter"}
    assert call(rest_event("GET", "/search", query={"q": "item 2"}))[1]["hits"][0]["item_id"] == "sku-2"
