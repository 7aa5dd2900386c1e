"""The browser demo in a real browser: Playwright driving Debian's chromium against a real
server process. Without chromium or Playwright these tests skip (``make browser`` installs
chromium); with REQUIRE_BROWSER_TESTS set, as .ci/run sets it, they fail instead.

Every test's page also checks, on teardown, that the browser logged no error and sent no
request off the server's origin (other than those a test expects, e.g. a refused upload).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tests.helpers import Server, encode, running_server
from tests.system.demo_page import DIGITS, chromium_path, device_draw, draw, wait_for_result
from training.datasets import Split

_missing = (
    "playwright is not installed (make install)"
    if importlib.util.find_spec("playwright") is None
    else None
    if chromium_path()
    else "chromium is not installed (make browser)"
)
if _missing:
    if os.environ.get("REQUIRE_BROWSER_TESTS"):
        pytest.fail(_missing, pytrace=False)
    pytest.skip(_missing, allow_module_level=True)

from playwright.sync_api import (  # noqa: E402  (after the skip: it may not be installed)
    Browser,
    ConsoleMessage,
    FilePayload,
    Page,
    Playwright,
    Request,
    Route,
    sync_playwright,
)

pytestmark = pytest.mark.slow

FASHION_MODEL = "fashion-cnn"
# What a refused request logs: expected where a test provokes it.
REFUSED = r"Failed to load resource: the server responded with a status of {}"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path())
    yield browser
    browser.close()


@dataclass
class Demo:
    """A page on the demo, with what the browser logged and requested."""

    page: Page
    url: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    allowed_errors: list[str] = field(default_factory=list)

    def open(self) -> None:
        response = self.page.goto(self.url + "/")
        assert response is not None
        assert response.ok
        self.page.wait_for_selector("[data-testid=model]:not([disabled])")

    def allow_error(self, pattern: str) -> None:
        self.allowed_errors.append(pattern)

    def label(self) -> str:
        return self.page.get_by_test_id("top-label").inner_text()

    def model(self) -> str:
        return self.page.get_by_test_id("model").input_value()

    def select_model(self, name: str) -> None:
        self.page.get_by_test_id("model").select_option(name)
        wait_for_result(self.page)

    def upload(self, data: bytes, name: str = "image.png", mime: str = "image/png") -> None:
        files = FilePayload(name=name, mimeType=mime, buffer=data)
        self.page.get_by_test_id("file").set_input_files(files=files)
        wait_for_result(self.page)

    def draw(self, digit: str) -> None:
        self.page.get_by_test_id("clear").click()
        draw(self.page, DIGITS[digit])
        wait_for_result(self.page)

    def probabilities(self) -> dict[str, float]:
        rows = self.page.locator("[data-testid^='prob-']")
        return {
            str(row.get_attribute("data-testid"))[len("prob-") :]: float(
                str(row.get_attribute("data-probability"))
            )
            for row in rows.all()
        }

    def error(self) -> str:
        alert = self.page.get_by_role("alert")
        return alert.inner_text() if alert.is_visible() else ""

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(re.search(p, e) for p in self.allowed_errors)]


@contextmanager
def _open_page(
    browser: Browser, server: Server, width: int = 1100, touch: bool = False
) -> Iterator[Demo]:
    context = browser.new_context(
        viewport={"width": width, "height": 800}, has_touch=touch, is_mobile=touch
    )
    page = context.new_page()
    demo = Demo(page, server.url)
    origin = server.url

    def guard(route: Route) -> None:
        # Nothing may leave the origin: such a request is recorded and never sent.
        url = route.request.url
        if url.startswith((origin + "/", "data:", "blob:")):
            route.continue_()
        else:
            demo.foreign.append(url)
            route.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            demo.errors.append(message.text)

    context.route("**/*", guard)
    page.on("console", console)
    page.on("pageerror", lambda exc: demo.errors.append(f"uncaught: {exc}"))
    page.on("request", lambda request: demo.requests.append(request))
    try:
        yield demo
        assert demo.foreign == []
        assert demo.unexpected_errors() == []
    finally:
        context.close()


@pytest.fixture
def demo(browser: Browser, server: Server) -> Iterator[Demo]:
    """The demo, open in a desktop-sized page, on the shared server (every shipped model)."""
    with _open_page(browser, server) as d:
        d.open()
        yield d


# ------------------------------------------------------------------------------ pictures


def _photo_of_a_seven() -> bytes:
    """A photo-like JPEG: a dark pen 7 on uneven, noisy light paper, off-centre."""
    rng = np.random.default_rng(7)
    h, w = 240, 320
    shade = np.linspace(215, 175, w)[None, :] + np.linspace(0, 20, h)[:, None]
    paper = np.clip(shade + rng.normal(0, 9, (h, w)), 0, 255).astype(np.uint8)
    image = Image.fromarray(paper).convert("RGB")
    pen = ImageDraw.Draw(image)
    pen.line([(150, 60), (225, 60), (175, 190)], fill=(40, 40, 55), width=11, joint="curve")
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: ``side``² RGB noise."""
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _drop(page: Page, data: bytes, name: str, mime: str, event: str) -> None:
    """Deliver a file as a drop on the page (``drop``) or a paste (``paste``)."""
    page.evaluate(
        """([b64, name, mime, event]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, { type: mime }));
            const target = document.querySelector("[data-testid=canvas]");
            if (event === "drop") {
                const options = { dataTransfer: data, bubbles: true, cancelable: true };
                target.dispatchEvent(new DragEvent("dragover", options));
                target.dispatchEvent(new DragEvent("drop", options));
            } else {
                const options = { clipboardData: data, bubbles: true, cancelable: true };
                document.body.dispatchEvent(new ClipboardEvent("paste", options));
            }
        }""",
        [base64.b64encode(data).decode(), name, mime, event],
    )
    wait_for_result(page)


# ------------------------------------------------------------------------------ the page


def test_the_page_loads_with_its_headers_and_blocks_inline_code(
    browser: Browser, server: Server
) -> None:
    with _open_page(browser, server) as demo:
        response = demo.page.goto(server.url + "/")
        assert response is not None
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"].startswith("default-src 'self';")
        assert response.headers["x-content-type-options"] == "nosniff"
        demo.page.wait_for_selector("[data-testid=model]:not([disabled])")
        # The CSP is enforced: an injected inline script does not run (and says so).
        demo.allow_error("violates the following Content Security Policy directive")
        demo.page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.injected = 1'; document.body.append(s); }"
        )
        assert demo.page.evaluate("window.injected") is None
        assert any("Content Security Policy" in e for e in demo.errors)
        # Every request went to the server's origin (the route guard also blocks others).
        assert {urlsplit(r.url).netloc for r in demo.requests} == {urlsplit(server.url).netloc}
        # The script and style arrived with the same headers.
        paths = {r.url.removeprefix(server.url) for r in demo.requests}
        assert {"/", "/static/demo.js", "/static/demo.css", "/models"} <= paths
        for request in demo.requests:
            if request.url.startswith(server.url + "/static/"):
                served = request.response()
                assert served is not None
                assert served.headers["x-content-type-options"] == "nosniff"


def test_the_default_model_is_preselected(demo: Demo) -> None:
    assert demo.model() == "mnist-lenet5"
    options = demo.page.get_by_test_id("model").locator("option").all_inner_texts()
    assert sorted(options) == sorted(
        ["fashion-cnn", "fashion-mlp", "mnist-lenet3x3", "mnist-lenet5"]
    )


@pytest.mark.parametrize("digit", sorted(DIGITS))
def test_a_digit_drawn_with_the_mouse_is_recognised(demo: Demo, digit: str) -> None:
    demo.draw(digit)
    assert demo.label() == digit
    # One request per drawing, even for a digit of several strokes (the debounce).
    predicts = [r for r in demo.requests if "/predict" in r.url]
    assert len(predicts) == 1
    assert predicts[0].method == "POST"


@pytest.mark.parametrize("device", ["touch", "pen"])
def test_a_digit_drawn_with_a_finger_or_pen_on_a_phone(
    browser: Browser, server: Server, device: str
) -> None:
    with _open_page(browser, server, width=360, touch=True) as demo:
        demo.open()
        kinds: list[str] = []
        demo.page.on("console", lambda m: kinds.append(m.text))
        demo.page.get_by_test_id("canvas").evaluate(
            "c => c.addEventListener('pointerdown', e => console.log(e.pointerType))"
        )
        cdp = demo.page.context.new_cdp_session(demo.page)
        device_draw(demo.page, cdp, DIGITS["7"], device)
        wait_for_result(demo.page)
        assert demo.label() == "7"
        assert kinds == [device]
        # The finger drew instead of scrolling the page.
        assert demo.page.evaluate("scrollY") == 0


def test_ten_bars_sum_to_one_and_the_top_label_is_the_longest(demo: Demo) -> None:
    demo.draw("7")
    probabilities = demo.probabilities()
    assert list(probabilities) == [str(d) for d in range(10)]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert max(probabilities, key=probabilities.__getitem__) == demo.label() == "7"
    best = demo.page.locator("[data-testid^='prob-'].best")
    assert best.get_attribute("data-testid") == "prob-7"
    # The results are announced to screen readers.
    status = demo.page.get_by_role("status")
    assert status.get_attribute("aria-live") == "polite"
    assert status.inner_text().startswith("7, ")


def test_clear_empties_the_canvas_and_the_result(demo: Demo) -> None:
    demo.draw("1")
    demo.page.get_by_test_id("clear").click()
    assert demo.label() == "–"
    assert demo.probabilities() == {}
    lit = demo.page.evaluate(
        "() => { const c = document.querySelector('[data-testid=canvas]');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 0; return n; }"
    )
    assert lit == 0


def test_test_images_of_both_datasets(demo: Demo, mnist_test: Split, fashion_test: Split) -> None:
    for i in range(4):
        demo.upload(encode(mnist_test.images[i]), f"mnist-{i}.png")
        assert demo.label() == str(int(mnist_test.labels[i]))
    demo.select_model(FASHION_MODEL)
    classes = list(demo.probabilities())  # the last upload, re-sent to the new model
    assert len(classes) == 10
    assert "Ankle boot" in classes
    for i in range(4):
        demo.upload(encode(fashion_test.images[i]), f"fashion-{i}.png")
        assert demo.label() == classes[int(fashion_test.labels[i])]
        assert sum(demo.probabilities().values()) == pytest.approx(1.0, abs=1e-5)


def test_a_photo_like_image_dropped_on_the_page(demo: Demo) -> None:
    _drop(demo.page, _photo_of_a_seven(), "photo.jpg", "image/jpeg", "drop")
    assert demo.label() == "7"
    # The upload is shown where the drawing was, beside the result.
    lit = demo.page.evaluate(
        "() => { const c = document.querySelector('[data-testid=canvas]');"
        " const d = c.getContext('2d').getImageData(140, 140, 1, 1).data; return d[0]; }"
    )
    assert lit > 100  # the light paper, not the empty black canvas


def test_an_image_pasted_into_the_page(demo: Demo, mnist_test: Split) -> None:
    _drop(demo.page, encode(mnist_test.images[0]), "image.png", "image/png", "paste")
    assert demo.label() == str(int(mnist_test.labels[0]))


def test_switching_models_predicts_again(demo: Demo) -> None:
    demo.draw("4")
    assert demo.page.locator("#latency").inner_text().startswith("mnist-lenet5 ")
    demo.select_model("mnist-lenet3x3")
    assert demo.label() == "4"
    assert demo.page.locator("#latency").inner_text().startswith("mnist-lenet3x3 ")
    sent = [r for r in demo.requests if "/predict" in r.url]
    assert "model=mnist-lenet3x3" in sent[-1].url
    demo.select_model(FASHION_MODEL)
    assert "T-shirt/top" in demo.probabilities()
    assert re.fullmatch(
        r"fashion-cnn · \d+ ms round trip", demo.page.locator("#latency").inner_text()
    )


def test_what_the_model_saw_is_shown_beside_the_input(demo: Demo) -> None:
    """?include_input=true: the model's input image, at its input size, scaled up."""
    demo.draw("7")
    seen = demo.page.get_by_alt_text(re.compile("the model received"))
    assert seen.is_visible()
    src = str(seen.get_attribute("src"))
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.size == (32, 32)  # mnist-lenet5's input
    assert image.mode == "L"
    size = seen.bounding_box()
    assert size is not None
    assert size["width"] >= 4 * 28
    assert seen.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"


def test_a_service_without_the_input_image_still_shows_the_rest(demo: Demo) -> None:
    def without_input(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        for prediction in body["predictions"]:
            prediction.pop("input_image", None)
        route.fulfill(response=response, body=json.dumps(body))

    demo.page.route("**/predict?*", without_input)
    demo.draw("1")
    assert demo.label() == "1"
    assert not demo.page.get_by_alt_text(re.compile("the model received")).is_visible()


@pytest.mark.parametrize(
    ("data", "mime", "status", "message"),
    [
        (b"hello, not an image", "text/plain", 415, "not an image type the service takes"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png", 400, "could not read that image"),
    ],
    ids=["text", "truncated-png"],
)
def test_a_refused_upload_is_a_readable_message(
    demo: Demo, data: bytes, mime: str, status: int, message: str
) -> None:
    demo.allow_error(REFUSED.format(status))
    demo.upload(data, "upload", mime)
    error = demo.error()
    assert message in error
    assert f"(HTTP {status})" in error
    assert demo.label() == "–"
    assert demo.page.get_by_role("status").inner_text() == error
    # The next good input clears the message.
    demo.draw("0")
    assert demo.error() == ""
    assert demo.label() == "0"


def test_a_422_shows_the_services_detail(demo: Demo) -> None:
    detail: list[dict[str, Any]] = [{"loc": ["query", "top_k"], "msg": "Input should be > 0"}]
    demo.page.route(
        "**/predict?*",
        lambda route: route.fulfill(
            status=422, content_type="application/json", body=json.dumps({"detail": detail})
        ),
    )
    demo.allow_error(REFUSED.format(422))
    demo.draw("7")
    assert demo.error() == (
        "The service found no usable image in the request: Input should be > 0 (HTTP 422)"
    )


# ------------------------------------------------------------------------------ layout, keyboard


@pytest.mark.parametrize("width", [360, 1280])
def test_no_horizontal_scrolling(
    browser: Browser, server: Server, fashion_test: Split, width: int
) -> None:
    with _open_page(browser, server, width=width) as demo:
        demo.open()
        demo.draw("4")
        demo.select_model(FASHION_MODEL)  # the longest class names
        demo.upload(encode(fashion_test.images[0]), "a-rather-long-file-name-for-a-phone.png")
        sizes = demo.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert sizes[0] <= sizes[1] == width
        canvas = demo.page.get_by_test_id("canvas").bounding_box()
        assert canvas is not None
        assert canvas["x"] >= 0
        assert canvas["x"] + canvas["width"] <= width


def test_keyboard_focus_order_and_use(demo: Demo, mnist_test: Split) -> None:
    page = demo.page
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(
            page.evaluate(
                "document.activeElement.dataset.testid || document.activeElement.textContent"
            )
        )
    assert order == ["model", "clear", "file", "API documentation"]
    # Each control has an accessible name, from its label.
    assert page.get_by_role("combobox", name="Model").get_attribute("data-testid") == "model"
    assert page.get_by_role("button", name="Clear").get_attribute("data-testid") == "clear"
    assert page.get_by_label("Or upload an image").get_attribute("data-testid") == "file"
    # The model picker works with the arrow keys.
    page.get_by_test_id("model").focus()
    page.keyboard.press("ArrowUp")
    assert demo.model() == "mnist-lenet3x3"
    # The file picker opens with the keyboard; the upload is predicted.
    page.get_by_test_id("file").focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    png = encode(mnist_test.images[1])
    chooser.value.set_files(files=FilePayload(name="a.png", mimeType="image/png", buffer=png))
    wait_for_result(page)
    assert demo.label() == str(int(mnist_test.labels[1]))
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")  # Clear
    assert demo.label() == "–"


# ------------------------------------------------------------------------------ other settings


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    """One model, an API key and a small body limit."""
    env = {
        "MNIST_SERVE_MODELS": "mnist-lenet5",
        "MNIST_SERVE_API_KEY": "correct-horse",
        "MNIST_SERVE_MAX_BODY_BYTES": "200000",
    }
    with running_server(env) as server:
        yield server


def test_api_key_is_asked_for_and_kept_in_memory(browser: Browser, keyed_server: Server) -> None:
    with _open_page(browser, keyed_server) as demo:
        page = demo.page
        demo.allow_error(REFUSED.format(401))
        page.goto(keyed_server.url + "/")
        key = page.get_by_label("API key")
        key.wait_for()
        assert "needs a valid API key" in demo.error()
        assert page.get_by_test_id("model").is_disabled()
        key.fill("wrong")
        with page.expect_response("**/models") as answer:
            key.press("Enter")
        assert answer.value.status == 401
        assert page.get_by_test_id("model").is_disabled()
        assert "needs a valid API key" in demo.error()
        key.fill("correct-horse")
        with page.expect_response("**/models") as answer:
            key.press("Enter")
        assert answer.value.status == 200
        page.wait_for_selector("[data-testid=model]:not([disabled])")
        assert not key.is_visible()
        assert demo.error() == ""
        demo.draw("7")
        assert demo.label() == "7"
        sent = [r for r in demo.requests if "/predict" in r.url][-1]
        assert sent.headers["x-api-key"] == "correct-horse"
        # Memory only: not in a URL, storage or a cookie.
        assert not any("correct-horse" in r.url for r in demo.requests)
        stored = page.evaluate(
            "() => JSON.stringify([localStorage, sessionStorage, document.cookie])"
        )
        assert "correct-horse" not in stored
        assert page.context.cookies() == []
        # An upload over the body limit: 413, a readable message.
        demo.allow_error(REFUSED.format(413))
        demo.upload(_noise_png(400))
        assert "too large for the service" in demo.error()
        assert "(HTTP 413)" in demo.error()


def test_demo_off(browser: Browser) -> None:
    env = {"MNIST_SERVE_MODELS": "mnist-lenet5", "MNIST_SERVE_DEMO": "false"}
    with running_server(env) as server, _open_page(browser, server) as demo:
        response = demo.page.goto(server.url + "/")
        assert response is not None
        assert response.ok
        assert response.headers["content-type"] == "application/json"
        assert response.json()["service"] == "mnist-serve"
        assert demo.page.locator("canvas").count() == 0
        demo.allow_error(REFUSED.format(404))
        asset = demo.page.goto(server.url + "/static/demo.js")
        assert asset is not None
        assert asset.status == 404
