from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.helpers import MODELS_DIR, Server, running_server
from training.datasets import Split, load_split


def wait_until_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError(client.get("/health/ready").json())


@pytest.fixture(scope="session")
def mnist_test() -> Split:
    return load_split("mnist", train=False)


@pytest.fixture(scope="session")
def fashion_test() -> Split:
    return load_split("fashion-mnist", train=False)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The app on every shipped model, in-process, lifespan run and models loaded."""
    torch.set_num_threads(1)
    app = create_app(Settings(models_dir=MODELS_DIR, device="cpu", torch_threads=1))
    with TestClient(app) as c:
        wait_until_ready(c)
        yield c


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A real ``python -m app`` process on a free loopback port, shared by a session."""
    with running_server() as s:
        yield s


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
