"""The browser demo's server side (app/routes/demo.py), in-process: content negotiation,
the security headers, the static files, MNIST_SERVE_DEMO=false. The page itself is driven
in a real browser by tests/system/test_demo_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.routes.demo import ASSETS, prefers_html
from tests.helpers import MODELS_DIR

CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
FIREFOX_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
INDEX_KEYS = {"service", "docs", "predict", "models", "default_model"}


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (CHROME_ACCEPT, True),
        (FIREFOX_ACCEPT, True),
        ("text/html", True),
        ("TEXT/HTML; q=0.5", True),
        ("", False),  # no header: an API client
        ("*/*", False),  # curl, httpx
        ("application/json", False),
        ("application/json, text/html;q=0.9", False),
        ("text/html;q=0, */*", False),
        ("text/html;q=oops", False),
        ("text/plain", False),
    ],
)
def test_prefers_html(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_a_browser_gets_the_page_with_its_security_headers(client: TestClient) -> None:
    response = client.get("/", headers={"Accept": CHROME_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert csp.startswith("default-src 'self';")
    # Nothing widens where scripts, styles or connections may come from.
    assert not re.search(r"(script|style|connect)-src|unsafe-|\*|https?:", csp)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "Accept" in response.headers["vary"]
    assert "<canvas" in response.text


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_api_clients_keep_the_json_index(client: TestClient, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["vary"] == "Accept"
    assert response.json() == {
        "service": "mnist-serve",
        "docs": "/docs",
        "predict": "POST /predict",
        "models": sorted(m["name"] for m in client.get("/models").json()["models"]),
        "default_model": "mnist-lenet5",
    }


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_static_files_are_served_with_their_type_and_headers(client: TestClient, name: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == ASSETS[name]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("default-src 'self';")
    assert response.headers["etag"]
    again = client.get(f"/static/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    ["/static/demo.html", "/static/nope.js", "/static/..%2Fmain.py", "/static/%2E%2E/config.py"],
)
def test_only_the_listed_static_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["detail"] == "Not Found"


class _Page(HTMLParser):
    """Collects what the page loads, its inline code and its test hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self.testids: list[str] = []
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if "style" in a or any(k.startswith("on") for k in a) or tag == "style":
            self.inline.append(f"<{tag}> {a}")
        if tag == "script":
            self._in_script = True
            if "src" not in a:
                self.inline.append("<script> without src")
        if a.get("data-testid"):
            self.testids.append(str(a["data-testid"]))
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.label_for.add(str(a["for"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script text")


def test_the_page_is_self_contained_with_its_test_hooks(client: TestClient) -> None:
    page = _Page()
    page.feed(client.get("/", headers={"Accept": "text/html"}).text)
    assert page.inline == []  # the CSP would block them anyway
    # Every URL is on this origin, and each one answers.
    assert page.urls
    for url in page.urls:
        assert re.match(r"/[^/]", url), url
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200
    assert sorted(page.testids) == ["canvas", "clear", "file", "model", "top-label"]
    # The form controls are labelled.
    assert {"model", "file", "api-key"} <= page.label_for
    script = client.get("/static/demo.js").text
    # No absolute URL in the script: every request goes to the page's origin.
    assert not re.search(r"\b(https?|wss?):", script)
    assert "localStorage" not in script
    assert "sessionStorage" not in script
    assert "document.cookie" not in script


def test_demo_off_keeps_the_json_index_for_browsers_too() -> None:
    settings = Settings(models_dir=MODELS_DIR, models=["mnist-lenet5"], device="cpu", demo=False)
    with TestClient(create_app(settings)) as client:
        response = client.get("/", headers={"Accept": CHROME_ACCEPT})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == INDEX_KEYS
        assert "vary" not in response.headers
        for name in ASSETS:
            assert client.get(f"/static/{name}").status_code == 404


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().demo is True
    monkeypatch.setenv("MNIST_SERVE_DEMO", "false")
    assert Settings().demo is False
