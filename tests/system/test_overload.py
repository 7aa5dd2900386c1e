"""Under overload, against a real server process: requests past the queue bound are shed
with 503 and Retry-After while every accepted one is answered correctly, health keeps
answering, the metrics count what was shed; the request timeout; request IDs, trace ids
and JSON log lines."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Server, encode, running_server

MODEL = "mnist-lenet5"


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: dict[str, object]
    start: int  # the first test image of the request


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[list[bytes], list[str]]:
    """64 MNIST test digits as PNG, and their labels."""
    pngs = [encode(mnist_test.images[i]) for i in range(64)]
    return pngs, [str(int(mnist_test.labels[i])) for i in range(64)]


def files(pngs: list[bytes], start: int, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", pngs[(start + i) % len(pngs)], "image/png")) for i in range(n)]


def multipart(pngs: list[bytes], start: int, n: int) -> tuple[bytes, dict[str, str]]:
    """A ``n``-file upload's body and headers, encoded once (the burst's client does no
    encoding while it sends)."""
    request = httpx.Request("POST", "http://x/", files=files(pngs, start, n))
    return request.read(), {"Content-Type": request.headers["Content-Type"]}


class HealthWatch:
    """Polls /health/live from a thread of its own, every 20 ms, and keeps the slowest."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.statuses: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.wait(0.02):
                started = time.perf_counter()
                self.statuses.add(client.get("/health/live").status_code)
                self.slowest = max(self.slowest, time.perf_counter() - started)


async def burst(url: str, pngs: list[bytes], requests: int, images: int) -> list[Answer]:
    """``requests`` concurrent ``images``-file uploads, started together."""
    bodies = {k: multipart(pngs, (k * 7) % len(pngs), images) for k in range(requests)}
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(k: int) -> Answer:
            body, headers = bodies[k]
            r = await client.post("/predict", content=body, headers=headers)
            return Answer(r.status_code, r.headers, r.json(), (k * 7) % len(pngs))

        answers = await asyncio.wait_for(
            asyncio.gather(*(one(k) for k in range(requests))), timeout=120
        )
    return list(answers)


def metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def check_shed(answer: Answer) -> None:
    assert answer.status == 503
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.body["request_id"] == answer.headers["x-request-id"]
    assert isinstance(answer.body["detail"], str)


def check_served(answer: Answer, labels: list[str], images: int) -> None:
    assert answer.status == 200, answer.body
    predictions = answer.body["predictions"]
    assert isinstance(predictions, list)
    got = [p["label"] for p in predictions]
    assert got == [labels[(answer.start + i) % len(labels)] for i in range(images)]


@pytest.fixture(scope="module")
def correct(client: TestClient, digits) -> tuple[list[bytes], list[str]]:
    """The digits the model classifies correctly (so a wrong answer is the server's fault)."""
    pngs, labels = digits
    r = client.post(f"/predict?model={MODEL}", files=files(pngs, 0, len(pngs)))
    got = [p["label"] for p in r.json()["predictions"]]
    keep = [i for i in range(len(pngs)) if got[i] == labels[i]]
    assert len(keep) >= 60
    return [pngs[i] for i in keep], [labels[i] for i in keep]


@pytest.fixture(scope="module")
def bounded() -> Iterator[Server]:
    """One worker whose queue holds two 32-image requests."""
    env = {"MNIST_SERVE_MODELS": MODEL, "MNIST_SERVE_MAX_QUEUE_IMAGES": "64"}
    with running_server(env) as server:
        yield server


def test_a_burst_far_above_capacity_is_shed_and_what_is_accepted_is_right(
    bounded: Server, correct
) -> None:
    pngs, labels = correct
    requests, images = 150, 32
    with HealthWatch(bounded.url) as health:
        answers = asyncio.run(burst(bounded.url, pngs, requests, images))
    shed = [a for a in answers if a.status == 503]
    served = [a for a in answers if a.status != 503]
    for answer in shed:
        check_shed(answer)
    for answer in served:
        check_served(answer, labels, images)
    assert shed, "nothing was shed"
    assert served, "nothing was served"
    assert health.statuses == {200}
    assert health.slowest < 1.0
    m = metrics(bounded)
    labels_of = (("model", MODEL), ("reason", "queue_full"))
    assert m[("mnist_serve_rejected_requests_total", labels_of)] == len(shed)
    assert m[("mnist_serve_queue_images", (("model", MODEL),))] == 0
    # Every admitted request left the queue once.
    waits = m[("mnist_serve_queue_wait_seconds_count", (("model", MODEL),))]
    assert waits == len(served)


def test_a_request_that_waits_past_its_timeout_is_answered_503(correct) -> None:
    pngs, labels = correct
    env = {
        "MNIST_SERVE_MODELS": MODEL,
        "MNIST_SERVE_MAX_QUEUE_IMAGES": "0",  # unbounded: only the timeout sheds
        "MNIST_SERVE_REQUEST_TIMEOUT_S": "0.001",
    }
    with running_server(env) as server:
        answers = asyncio.run(burst(server.url, pngs, 60, 16))
        m = metrics(server)
    expired = [a for a in answers if a.status == 503]
    for answer in expired:
        check_shed(answer)
        assert "past the timeout of 0.001 s" in str(answer.body["detail"])
    for answer in answers:
        if answer.status != 503:
            check_served(answer, labels, 16)
    assert expired, "no request waited a millisecond behind a burst of 60"
    timeouts = m[("mnist_serve_rejected_requests_total", (("model", MODEL), ("reason", "timeout")))]
    assert timeouts == len(expired)


# --- request IDs and logs -----------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "given", ["abc-123", "a" * 128, "Root=1-5759e988-bd862e3f", "x/y+z=w~v_u.t:s"]
)
def test_a_well_formed_request_id_is_echoed(client: TestClient, given: str) -> None:
    r = client.get("/health/live", headers={"X-Request-ID": given})
    assert r.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given", [None, "", "a" * 129, "has space", "semi;colon", "<script>", "ünï", 'q"uote'],
)  # fmt: skip
def test_a_missing_or_malformed_request_id_is_replaced(
    client: TestClient, given: str | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given.encode()}
    r = client.get("/models", headers=headers)
    rid = r.headers["x-request-id"]
    assert rid != given
    assert len(rid) == 32
    assert int(rid, 16) >= 0  # a uuid4 in hex
    assert client.get("/models").headers["x-request-id"] != rid  # one per request


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/predict?model=nope", {"files": {"file": ("a.png", b"x", "image/png")}}, 404),
        ("POST", "/predict", {"files": {"file": ("a.png", b"not a png", "image/png")}}, 415),
        ("POST", "/predict?top_k=0", {"files": {"file": ("a.png", b"x", "image/png")}}, 422),
        ("GET", "/no/such/path", {}, 404),
    ],
    ids=["serve-error", "not-an-image", "validation", "unknown-path"],
)
def test_error_bodies_carry_the_request_id(
    client: TestClient, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    r = client.request(method, path, headers={"X-Request-ID": "err-42"}, **kwargs)
    assert r.status_code == status
    assert r.headers["x-request-id"] == "err-42"
    body = r.json()
    assert body["request_id"] == "err-42"
    assert body["detail"]


def test_an_oversized_body_is_refused_with_the_request_id() -> None:
    from app.config import Settings
    from app.main import create_app
    from tests.helpers import MODELS_DIR

    app = create_app(
        Settings(models_dir=MODELS_DIR, models=[MODEL], device="cpu", max_body_bytes=100)
    )
    with TestClient(app) as c:
        r = c.post("/predict", content=b"x" * 1000, headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_json_logs_one_object_per_line_with_the_request_id_and_trace(digits) -> None:
    pngs, _ = digits
    env = {
        "MNIST_SERVE_MODELS": MODEL,
        "MNIST_SERVE_LOG_FORMAT": "json",
        "MNIST_SERVE_ACCESS_LOG": "true",
    }
    with running_server(env) as server:
        ok = httpx.post(
            f"{server.url}/predict", files=files(pngs, 0, 3),
            headers={"X-Request-ID": "json-ok", "traceparent": TRACEPARENT}, timeout=30,
        )  # fmt: skip
        bad = httpx.post(
            f"{server.url}/predict", files={"file": ("a.png", b"not a png", "image/png")},
            headers={"X-Request-ID": "json-bad"}, timeout=30,
        )  # fmt: skip
        assert (ok.status_code, bad.status_code) == (200, 415)
        health = httpx.get(f"{server.url}/health/ready", timeout=30)
        server.stop()
        output = server.output()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # each one JSON
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert any(line["logger"].startswith("uvicorn") for line in lines), "uvicorn's lines too"
    access = {line["request_id"]: line for line in lines if line["logger"] == "app.access"}
    expected = {
        "method": "POST", "path": "/predict", "status": 200, "model": MODEL, "images": 3,
        "trace_id": TRACE,
    }  # fmt: skip
    assert {key: access["json-ok"].get(key) for key in expected} == expected
    assert access["json-ok"]["duration_ms"] > 0
    assert access["json-bad"]["status"] == 415
    assert "trace_id" not in access["json-bad"]
    generated = access[health.headers["x-request-id"]]
    assert (generated["path"], generated["model"], generated["images"]) == (
        "/health/ready", None, None,
    )  # fmt: skip
    # Lines outside a request carry no request fields.
    assert any("request_id" not in line for line in lines)


def test_text_logs_carry_the_request_id(digits) -> None:
    pngs, _ = digits
    env = {"MNIST_SERVE_MODELS": MODEL, "MNIST_SERVE_ACCESS_LOG": "true"}
    with running_server(env) as server:
        httpx.post(
            f"{server.url}/predict", files=files(pngs, 0, 2),
            headers={"X-Request-ID": "text-1", "traceparent": TRACEPARENT}, timeout=30,
        )  # fmt: skip
        server.stop()
        output = server.output()
    (line,) = [ln for ln in output.splitlines() if "request_id=text-1" in ln]
    assert "app.access: POST /predict 200" in line
    assert f"model={MODEL} images=2" in line
    assert f"trace_id={TRACE}" in line
