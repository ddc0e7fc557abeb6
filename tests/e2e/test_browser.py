"""A real browser on the local stack's page: Debian's Chromium driven by Playwright for Python.

The browser is the system's (`apt-get install chromium`; `make test` installs it when run as root, and
``CATALENS_CHROMIUM`` names another): Playwright's own browser downloads are not used. A screenshot of each run is kept
under ``artifacts/e2e/``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import StackClient, photo_bytes

CHROMIUM = Path(os.environ.get("CATALENS_CHROMIUM") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

DROP_FILE = """
([selector, b64, name]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
    const target = document.querySelector(selector);
    for (const type of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }
}
"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"the browser test needs Chromium at {CHROMIUM}: apt-get install -y chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.slow
def test_drop_a_photo_see_cards_and_upload_as_merchant(
    stack: StackClient, browser, repo_root: Path, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(stack.info["web_url"])
    page.wait_for_selector("#shopper option[value='alice']", state="attached")
    page.wait_for_function("document.querySelector('#summary').textContent.includes('products in the catalog')")
    assert "below" not in page.locator("#summary").inner_text()  # nothing is shown below yet

    photo = photo_bytes(40, base="coffee.png")
    page.evaluate(DROP_FILE, ["#drop", base64.b64encode(photo).decode(), "espresso.jpg"])
    page.wait_for_selector(".card")
    cards = page.locator(".card")
    assert cards.count() == 12
    assert "Espresso cup" in cards.first.locator(".title").inner_text()
    assert "products like your photo" in page.locator("#summary").inner_text()
    assert "pick a product below" in page.locator("#summary").inner_text()
    assert page.locator("#query-preview").is_visible()
    first_image = cards.first.locator("img")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=first_image.element_handle())

    artifacts = repo_root / "artifacts" / "e2e"
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "search-by-photo.png"))

    # drag a box on the photo: the search looks at that part only, and the page draws the box the answer names
    preview = page.locator("#query-preview").bounding_box()
    assert preview is not None
    with page.expect_response(lambda r: r.request.method == "POST" and "region=" in r.url) as boxed:
        page.mouse.move(preview["x"] + preview["width"] * 0.1, preview["y"] + preview["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(preview["x"] + preview["width"] * 0.3, preview["y"] + preview["height"] * 0.4, steps=4)
        page.mouse.move(preview["x"] + preview["width"] * 0.6, preview["y"] + preview["height"] * 0.7, steps=4)
        page.mouse.up()
    assert boxed.value.status == 200
    region = boxed.value.json()["query"]["region"]
    assert region["source"] == "request"
    assert [round(v, 1) for v in region["normalized"]] == [0.1, 0.2, 0.6, 0.7]
    page.wait_for_function("document.querySelector('#summary').textContent.includes('the box you drew')")
    drawn = page.locator("#region-box").bounding_box()
    assert drawn is not None
    assert abs(drawn["x"] - (preview["x"] + 0.1 * preview["width"])) < 4
    assert abs(drawn["width"] - 0.5 * preview["width"]) < 4
    page.screenshot(path=str(artifacts / "search-a-region.png"))
    with page.expect_response(lambda r: r.request.method == "POST" and "/api/search" in r.url) as whole:
        page.click("#region-clear")
    assert "region=" not in whole.value.url
    page.wait_for_function("document.querySelector('#summary').textContent.includes('like your photo')")
    assert page.locator("#region-box").is_hidden()

    # the main subject: the page asks for region=auto and draws the box the detector chose (if any stood apart)
    with page.expect_response(lambda r: r.request.method == "POST" and "region=auto" in r.url) as subject:
        page.check("#subject")
    assert subject.value.status == 200
    if subject.value.json()["query"]["region"]["source"] == "subject":
        page.wait_for_selector("#region-box:not([hidden])")
        assert "main subject" in page.locator("#summary").inner_text()
    page.uncheck("#subject")

    # the predicted category is shown; "predicted category only" filters to it (category=auto)
    predicted = whole.value.json()["category"]["name"]
    assert predicted
    page.wait_for_function(
        "(text) => document.querySelector('#summary').textContent.includes(text)", arg=f"looks like {predicted}"
    )
    with page.expect_response(lambda r: r.request.method == "POST" and "category=auto" in r.url) as auto:
        page.check("#f-auto")
    assert auto.value.json()["query"]["category_filter"] == predicted
    assert {hit["fields"]["category"] for hit in auto.value.json()["hits"]} == {predicted}
    page.wait_for_function("document.querySelector('#summary').textContent.includes('only that category')")
    page.uncheck("#f-auto")

    # several products: groups=2 answers one list per product found, and the page draws their numbered boxes
    with page.expect_response(lambda r: r.request.method == "POST" and "groups=2" in r.url) as grouped:
        page.select_option("#groups", "2")
    found = grouped.value.json()["groups"]
    assert 1 <= len(found) <= 2
    page.wait_for_selector(".group-head")
    assert page.locator(".region-box.group").count() == len(found)
    assert page.locator(".group-head").first.inner_text().startswith("Product 1 in your photo")
    page.screenshot(path=str(artifacts / "groups.png"))
    page.select_option("#groups", "")

    # a shopper: the page gets a token from the shop's stand-in backend and sends it, never a bare user_id
    with page.expect_request(lambda r: r.method == "POST" and "/api/search" in r.url) as searched:
        page.select_option("#shopper", "alice")
    assert searched.value.headers.get("x-shopper-token", "").startswith("v1.")
    assert "user_id=" not in searched.value.url
    with page.expect_response(lambda r: r.request.method == "DELETE" and "/users/alice/profile" in r.url) as erased:
        page.click("#forget")
    assert erased.value.status == 200
    assert erased.value.request.headers.get("x-shopper-token", "").startswith("v1.")

    page.check("#explain")
    page.wait_for_selector(".card .explain:not([hidden])")
    cards.nth(3).locator(".more").click()
    page.wait_for_function("document.querySelector('#summary').textContent.includes('products like “')")
    assert page.locator(".card").count() > 0

    page.click("#merchant-toggle")
    page.wait_for_selector("#items li")
    assert page.locator("#items li").count() >= 1
    new_photo = tmp_path / "browser-upload-lamp.jpg"
    new_photo.write_bytes(photo_bytes(41))
    page.fill("#u-category", "lighting")
    page.set_input_files("#upload-files", str(new_photo))
    page.wait_for_selector("#uploads li.done", timeout=60_000)  # polls GET /items/{id} until it answers
    assert "searchable in" in page.locator("#uploads li").first.inner_text()
    assert stack.api("GET", "/items/browser-upload-lamp").json()["fields"]["category"] == "lighting"
    page.screenshot(path=str(artifacts / "merchant-panel.png"))
    assert errors == []
    page.close()


def test_an_empty_catalog_says_how_to_add_photos(stack: StackClient, browser) -> None:
    """The page's words for a stack with no products (its status answered as an empty stack answers it)."""
    page = browser.new_page()
    status = stack.status() | {"index_version": "empty", "item_count": 0}
    page.route("**/local/status", lambda route: route.fulfill(json=status))
    page.goto(stack.info["web_url"])
    page.wait_for_function("document.querySelector('#summary').textContent.includes('No products yet')")
    summary = page.locator("#summary").inner_text()
    assert "Merchant" in summary
    assert "CATALOG=" in summary
    assert "below" not in summary
    page.close()


def test_an_older_answer_that_arrives_last_does_not_replace_the_newer_one(stack: StackClient, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.info["web_url"])
    page.wait_for_function("document.querySelector('#summary').textContent.includes('products in the catalog')")
    held = []

    def hold_plain_searches(route) -> None:  # the plain search is answered only after the explained one
        if "explain=true" in route.request.url:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/search*", hold_plain_searches)
    page.evaluate(DROP_FILE, ["#drop", base64.b64encode(photo_bytes(41, base="coffee.png")).decode(), "cup.jpg"])
    for _ in range(100):  # the route handler runs while the test waits
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    page.check("#explain")
    page.wait_for_selector(".card .explain:not([hidden])")

    held[0].continue_()  # the stale, unexplained answer now arrives
    page.wait_for_timeout(1500)
    assert page.locator(".card .explain:not([hidden])").count() > 0, "a stale answer replaced the newer one"


def test_the_words_box_searches_by_words_alone_and_beside_a_photo(stack: StackClient, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(stack.info["web_url"])
    page.wait_for_function("document.querySelector('#summary').textContent.includes('products in the catalog')")
    page.fill("#words", "espresso cup")
    with page.expect_response(lambda r: r.request.method == "GET" and "/search?" in r.url) as answered:
        page.press("#words", "Enter")
    assert answered.value.status == 200
    page.wait_for_function("document.querySelector('#summary').textContent.includes('matching the words')")
    assert "Espresso cup" in page.locator(".card").first.locator(".title").inner_text()

    photo = photo_bytes(42, base="coffee.png")
    with page.expect_response(lambda r: r.request.method == "POST" and "q=espresso" in r.url) as fused:
        page.evaluate(DROP_FILE, ["#drop", base64.b64encode(photo).decode(), "cup.jpg"])
    assert fused.value.status == 200
    assert fused.value.json()["query"]["q"] == "espresso cup"
    page.wait_for_function("document.querySelector('#summary').textContent.includes('and the words')")
    assert errors == []
    page.close()
