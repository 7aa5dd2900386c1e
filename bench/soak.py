"""Soak: sustained load with malformed uploads mixed in, against a real server on loopback.

By default it starts its own ``python -m app`` (shipped models, CPU) on a free loopback
port, then lowers its own priority (``nice``) so the server is not starved by the client.
Each of ``--concurrency`` workers posts one upload after another for ``--duration``
seconds: real MNIST test digits as PNG, and with probability ``--malformed`` a broken one
(truncated PNG/JPEG, random bytes, text, a bad CRC, a PDF, an empty file), which must get
its 4xx. It reports requests, answers by class (no 5xx and no connection errors allowed),
p50/p99 per time window, accuracy of the valid answers, and the server's resident memory
before load, after a warm-up and at the end (growth after warm-up must stay under 5%).

    python bench/soak.py                         # 5 minutes, concurrency 64, 10% malformed
    python bench/soak.py --duration 30 --out bench/out/soak.json
    python bench/soak.py --url http://127.0.0.1:8000 --pid 1234   # an already running server

Exit status 0 when every promise held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.testing import REPO, Server, spawn, wait_ready
from tests.helpers import encode
from training.datasets import load_split


def start_server(log: Path) -> Server:
    """``python -m app`` on a free loopback port, its output going to ``log``."""
    env = {
        "MNIST_SERVE_DEVICE": os.environ.get("MNIST_SERVE_DEVICE", "cpu"),
        "MNIST_SERVE_TORCH_THREADS": os.environ.get("MNIST_SERVE_TORCH_THREADS", "1"),
        "MNIST_SERVE_ACCESS_LOG": "false",
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        return spawn(env, output=out)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the worker processes, with MNIST_SERVE_WORKERS > 1)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            pids += _tree(int(child))
    return pids


def rss_bytes(pid: int) -> int:
    """Resident memory of the server: the process and all its workers together."""
    total = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except FileNotFoundError:
            continue
        total += next(
            int(x.split()[1]) * 1024 for x in status.splitlines() if x.startswith("VmRSS:")
        )
    return total


def malformed_corpus(png: bytes, jpeg: bytes, rng: random.Random) -> list[tuple[str, bytes, int]]:
    """(name, bytes, expected status) for broken uploads."""
    idat = png.index(b"IDAT") - 4
    length = int.from_bytes(png[idat : idat + 4], "big")
    bad_crc = bytearray(png)
    bad_crc[idat + 8 + length] ^= 0xFF
    return [
        ("truncated.png", png[: len(png) // 2], 400),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], 400),
        ("noise.png", rng.randbytes(2048), 400),
        ("text.png", b"this is not an image\n" * 30, 415),
        ("doc.png", b"%PDF-1.4\n" + rng.randbytes(256), 415),
        ("crc.png", bytes(bad_crc), 400),
        ("empty.png", b"", 400),
    ]


@dataclass
class Stats:
    started: float
    window_s: float
    classes: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    windows: dict[int, list[float]] = field(default_factory=dict)
    correct: int = 0
    valid: int = 0

    def record(self, latency: float) -> None:
        index = int((time.monotonic() - self.started) // self.window_s)
        self.windows.setdefault(index, []).append(latency)


async def worker(
    client: httpx.AsyncClient,
    stats: Stats,
    deadline: float,
    digits: list[tuple[bytes, str]],
    broken: list[tuple[str, bytes, int]],
    malformed: float,
    rng: random.Random,
) -> None:
    while time.monotonic() < deadline:
        if rng.random() < malformed:
            name, data, expected = rng.choice(broken)
            label = None
        else:
            data, label = rng.choice(digits)
            name, expected = "digit.png", 200
        started = time.monotonic()
        try:
            response = await client.post("/predict", files={"file": (name, data, "image/png")})
        except httpx.TimeoutException:
            stats.classes["timeout"] += 1
            continue
        except httpx.TransportError as exc:
            stats.classes["connection error"] += 1
            stats.unexpected[f"connection error: {type(exc).__name__}"] += 1
            continue
        stats.record(time.monotonic() - started)
        code = response.status_code
        stats.classes[f"{code // 100}xx"] += 1
        if code != expected:
            stats.unexpected[f"{name}: {code} (expected {expected})"] += 1
        if label is not None and code == 200:
            stats.valid += 1
            stats.correct += response.json()["predictions"][0]["label"] == label


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def soak(args: argparse.Namespace, url: str, pid: int) -> dict[str, object]:
    rng = random.Random(args.seed)
    test = load_split("mnist", train=False)
    picks = rng.sample(range(len(test.labels)), 500)
    digits = [(encode(test.images[i]), str(int(test.labels[i]))) for i in picks]
    from PIL import Image

    jpeg = encode(Image.fromarray(test.images[0, 0].numpy()).convert("RGB"), "JPEG")
    broken = malformed_corpus(digits[0][0], jpeg, rng)

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    timeout = httpx.Timeout(args.timeout)
    rss_before = rss_bytes(pid)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        # warm-up at full concurrency, not counted
        warm = Stats(time.monotonic(), args.window)
        deadline = time.monotonic() + args.warmup
        await asyncio.gather(
            *(worker(client, warm, deadline, digits, broken, args.malformed, random.Random(i))
              for i in range(args.concurrency))
        )  # fmt: skip
        rss_warm = rss_bytes(pid)
        stats = Stats(time.monotonic(), args.window)
        deadline = time.monotonic() + args.duration
        samples = [rss_warm]

        async def sample_rss() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(args.window)
                samples.append(rss_bytes(pid))

        await asyncio.gather(
            sample_rss(),
            *(worker(client, stats, deadline, digits, broken, args.malformed,
                     random.Random(1000 + i)) for i in range(args.concurrency)),
        )  # fmt: skip
        elapsed = time.monotonic() - stats.started
        ready = (await client.get("/health/ready")).status_code
    rss_end = rss_bytes(pid)
    total = sum(stats.classes.values())
    windows = [
        {
            "t_s": round((i + 1) * args.window),
            "requests": len(lat),
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
        }
        for i, lat in sorted(stats.windows.items())
    ]
    everything = [x for lat in stats.windows.values() for x in lat]
    growth = (rss_end - rss_warm) / rss_warm
    result: dict[str, object] = {
        "url": url,
        "server_processes": len(_tree(pid)),
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "malformed_fraction": args.malformed,
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "by_class": dict(stats.classes),
        "unexpected": dict(stats.unexpected),
        "valid_accuracy": round(stats.correct / stats.valid, 4) if stats.valid else None,
        "p50_ms": round(percentile(everything, 50) * 1000, 1),
        "p99_ms": round(percentile(everything, 99) * 1000, 1),
        "windows": windows,
        "rss_mib": {
            "before_load": round(rss_before / 2**20, 1),
            "after_warmup": round(rss_warm / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
            "max_during": round(max(samples) / 2**20, 1),
            "growth_after_warmup_pct": round(100 * growth, 2),
        },
        "ready_after": ready,
    }
    failures = []
    if stats.classes["5xx"]:
        failures.append("5xx answers")
    if stats.classes["connection error"] or stats.classes["timeout"]:
        failures.append("connection errors or timeouts")
    if stats.unexpected:
        failures.append("unexpected status codes")
    if growth >= 0.05:
        failures.append("RSS grew 5% or more")
    if ready != 200:
        failures.append("not ready afterwards")
    result["failures"] = failures
    result["ok"] = not failures
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--malformed", type=float, default=0.10)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per p99 window")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="an already running server (needs --pid)")
    parser.add_argument("--pid", type=int, help="its process id, for the RSS readings")
    parser.add_argument("--nice", type=int, default=10, help="client priority decrement")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--server-log", type=Path, default=REPO / "bench" / "out" / "soak-server.log",
        help="where the started server's output goes",
    )  # fmt: skip
    args = parser.parse_args()

    server = None
    if args.url:
        if args.pid is None:
            parser.error("--url needs --pid")
        url, pid = args.url, args.pid
    else:
        server = start_server(args.server_log)
        wait_ready(server)
        url, pid = server.url, server.process.pid
    os.nice(args.nice)  # after the server started: only the client runs at lower priority
    try:
        result = asyncio.run(soak(args, url, pid))
    finally:
        if server is not None:
            server.process.terminate()
            server.process.wait(timeout=60)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
