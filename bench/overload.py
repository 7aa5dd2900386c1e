"""The overload row: each side offered about 3x what it can serve, answers checked.

    python bench/overload.py                # starts both sides as bench/run.py does
    python bench/run.py                     # the same row at the end of the table

For each side (the service, with its default queue bound, and the plain baseline):

1. *Peak*: a closed loop of ``--overload-concurrency`` clients sending ``--overload-files``
   -file uploads for ``--overload-seconds``; correct answers per second over the run (the
   peak that goodput is compared with) and over its best third (which sets the offered
   load: a load spike elsewhere on a shared machine lowers the mean, not the best
   stretch, and must not leave the load under 3x). The uploads are
   phone photos of MNIST test digits (``--overload-kind photo``, default: JPEGs of 240-640
   px made by bench/realworld.py, as in the report that asked for admission control: 16
   photos a request) or the 28x28 test PNGs (``digit``; on a 2-core machine a Python client
   cannot offer 3x the service's rate of those).
2. *Overload*: an open loop at ``--overload-factor`` times the best stretch, for the same
   time: a request is sent on schedule whether or not earlier ones were answered (as
   independent users do), at most ``--overload-in-flight`` at once, each with a 60 s
   timeout; then the client waits up to 60 s for what is still in flight.

Reported: offered and achieved req/s; goodput (answers with exactly the expected labels,
per second from the first request to the last answer); the share shed (503, which must
carry a whole-seconds ``Retry-After``); p50 and p99 of the accepted requests, also for
those sent in the first and the second half of the window (a queue that grows shows as a
second half slower than the first); anything else as errors. The expected labels are the
service's answers to each upload on an idle server (the agreement check of bench/run.py
holds them equal on both sides).

The load generator is Python (httpx, bodies encoded once) pinned to the client core, so the
offered rate is bounded by what one core of Python sends; the achieved rate says whether it
kept up. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Body = tuple[bytes, dict[str, str]]


@dataclass
class Overload:
    side: str
    kind: str
    files: int
    peak_rps: float  # correct answers per second, closed loop, over the whole run
    best_rps: float  # the same over its best third: the offered load is a multiple of this
    offered_rps: float  # the open loop's schedule
    achieved_rps: float  # what the client managed to send
    sent: int
    correct: int
    wrong: int
    shed: int
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    goodput_rps: float = 0.0
    shed_share: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p99_first_half_ms: float = 0.0
    p99_second_half_ms: float = 0.0

    @property
    def goodput_of_peak(self) -> float:
        return self.goodput_rps / self.peak_rps if self.peak_rps else 0.0


def photos(count: int) -> list[bytes]:
    """``count`` phone photos (JPEG) of MNIST test digits, the same on every run."""
    from bench.realworld import phone_photo
    from training.datasets import load_split

    split = load_split("mnist", train=False)
    rng = np.random.default_rng(19)
    out = []
    for i in range(count):
        buf = io.BytesIO()
        phone_photo(split.images[i, 0].numpy(), rng).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def bodies(images: list[bytes], files: int, count: int) -> list[Body]:
    """``count`` multipart uploads of ``files`` images each, rotating through ``images``."""
    out = []
    for k in range(count):
        parts = [
            ("file", (f"{i}", images[(k * files + i) % len(images)], "application/octet-stream"))
            for i in range(files)
        ]
        request = httpx.Request("POST", "http://x/", files=parts)
        out.append((request.read(), {"Content-Type": request.headers["Content-Type"]}))
    return out


def labels_of(response: httpx.Response) -> list[str]:
    return [p["label"] for p in response.json()["predictions"]]


def expected_labels(url: str, uploads: list[Body]) -> list[list[str]]:
    with httpx.Client(base_url=url, timeout=60) as client:
        out = []
        for body, headers in uploads:
            r = client.post("/predict", content=body, headers=headers)
            r.raise_for_status()
            out.append(labels_of(r))
        return out


def _valid_retry_after(response: httpx.Response) -> bool:
    value = response.headers.get("retry-after", "")
    return value.isdigit() and int(value) >= 1


async def peak(url: str, uploads: list[Body], expected: list[list[str]], concurrency: int,
               seconds: float) -> tuple[float, float]:  # fmt: skip
    """Correct answers per second of a closed loop of ``concurrency`` clients: over the
    whole run, and over its best stretch of a third of the run (a load spike from elsewhere
    on a shared machine lowers the mean but not the best stretch)."""
    done: list[float] = []  # when each correct answer came
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def loop(c: int) -> None:
            k = c
            while time.perf_counter() < deadline:
                body, headers = uploads[k % len(uploads)]
                r = await client.post("/predict", content=body, headers=headers)
                if r.status_code == 200 and labels_of(r) == expected[k % len(uploads)]:
                    done.append(time.perf_counter())
                k += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in range(concurrency)))
        mean = len(done) / (time.perf_counter() - started)
    window = seconds / 3
    ends = np.array(sorted(done))
    # For each answer, the answers in the window that ends with it.
    counts = np.arange(1, len(ends) + 1) - np.searchsorted(ends, ends - window, side="right")
    return mean, (float(counts.max()) / window if len(ends) else 0.0)


async def offer(
    side: str, url: str, uploads: list[Body], expected: list[list[str]],
    peak_rps: tuple[float, float], factor: float, seconds: float, in_flight: int, files: int,
    kind: str,
) -> Overload:  # fmt: skip
    """The open loop at ``factor`` x the best stretch of ``peak_rps`` (mean, best) for
    ``seconds``; goodput is compared with the mean."""
    rate = factor * peak_rps[1]
    n = max(1, round(rate * seconds))
    accepted: list[tuple[float, float]] = []  # (sent at, latency) of correct answers
    counts: Counter[str] = Counter()
    busy = 0
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(k: int) -> None:
            nonlocal busy
            body, headers = uploads[k % len(uploads)]
            sent = time.perf_counter()
            try:
                r = await client.post("/predict", content=body, headers=headers)
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] += 1
                return
            finally:
                busy -= 1
            if r.status_code == 200:
                if labels_of(r) == expected[k % len(uploads)]:
                    accepted.append((sent - start, time.perf_counter() - sent))
                    counts["correct"] += 1
                else:
                    counts["wrong"] += 1
            elif r.status_code == 503 and _valid_retry_after(r):
                counts["shed"] += 1
            else:
                counts[f"status {r.status_code}"] += 1

        tasks = []
        start = time.perf_counter()
        for k in range(n):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if busy >= in_flight:
                counts["not sent (client at its in-flight cap)"] += 1
                continue
            busy += 1
            tasks.append(asyncio.ensure_future(one(k)))
        send_window = time.perf_counter() - start
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=60)
            for task in pending:
                task.cancel()
            if pending:
                counts["unanswered after the drain"] += len(pending)
        elapsed = time.perf_counter() - start

    latencies = np.array([lat for _, lat in accepted]) * 1000
    half = seconds / 2
    first = np.array([lat for at, lat in accepted if at < half]) * 1000
    second = np.array([lat for at, lat in accepted if at >= half]) * 1000

    def p(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    sent = len(tasks)
    correct, wrong, shed = counts.pop("correct", 0), counts.pop("wrong", 0), counts.pop("shed", 0)
    return Overload(
        side=side, kind=kind, files=files, peak_rps=peak_rps[0], best_rps=peak_rps[1],
        offered_rps=rate,
        achieved_rps=sent / send_window, sent=sent, correct=correct, wrong=wrong, shed=shed,
        errors=dict(counts), elapsed_s=elapsed, goodput_rps=correct / elapsed,
        shed_share=shed / sent if sent else 0.0, p50_ms=p(latencies, 50),
        p99_ms=p(latencies, 99), p99_first_half_ms=p(first, 99), p99_second_half_ms=p(second, 99),
    )  # fmt: skip


@contextmanager
def pinned(cores: str) -> Iterator[None]:
    """This process on ``cores`` (a taskset list such as ``1`` or ``8-15``) meanwhile."""
    before = os.sched_getaffinity(0)
    wanted: set[int] = set()
    for part in cores.split(","):
        lo, _, hi = part.partition("-")
        wanted.update(range(int(lo), int(hi or lo) + 1))
    os.sched_setaffinity(0, wanted)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Options:
    kind: str = "photo"
    files: int = 16
    seconds: float = 10
    factor: float = 3.0
    concurrency: int = 16
    in_flight: int = 1024
    uploads: int = 16


def measure(sides: list[tuple[str, str]], pngs: list[str], opts: Options,
            client_cores: str) -> list[Overload]:  # fmt: skip
    """The overload row of each (name, url) side; the first side's idle answers are the
    expected labels. ``pngs``: paths of the digit PNGs."""
    if opts.kind == "photo":
        images = photos(opts.files * opts.uploads)
    else:
        images = [Path(path).read_bytes() for path in pngs]
    uploads = bodies(images, opts.files, opts.uploads)
    expected = expected_labels(sides[0][1], uploads)
    rows = []
    with pinned(client_cores):
        for name, url in sides:
            rps = asyncio.run(peak(url, uploads, expected, opts.concurrency, opts.seconds))
            load = offer(
                name, url, uploads, expected, rps, opts.factor, opts.seconds, opts.in_flight,
                opts.files, opts.kind,
            )  # fmt: skip
            rows.append(asyncio.run(load))
    return rows


def table(rows: list[Overload]) -> str:
    head = (
        f"{'side':<9} {'kind':<5} {'files':>5} {'peak r/s':>8} {'best':>6} {'offered':>8} "
        f"{'sent r/s':>8} "
        f"{'goodput':>8} {'of peak':>7} {'shed':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99 1st/2nd half ms':>20} {'wrong':>5}  errors"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        halves = f"{r.p99_first_half_ms:.0f} / {r.p99_second_half_ms:.0f}"
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"
        lines.append(
            f"{r.side:<9} {r.kind:<5} {r.files:>5} {r.peak_rps:>8.1f} {r.best_rps:>6.1f} "
            f"{r.offered_rps:>8.1f} "
            f"{r.achieved_rps:>8.1f} {r.goodput_rps:>8.1f} {r.goodput_of_peak:>7.0%} "
            f"{r.shed_share:>6.0%} {r.p50_ms:>8.0f} {r.p99_ms:>8.0f} {halves:>20} "
            f"{r.wrong:>5}  {errors}"
        )
    return "\n".join(lines)


def as_json(rows: list[Overload]) -> list[dict[str, object]]:
    return [asdict(r) | {"goodput_of_peak": r.goodput_of_peak} for r in rows]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    d = Options()
    ap.add_argument("--overload-kind", choices=["photo", "digit"], default=d.kind,
                    help="what is uploaded")  # fmt: skip
    ap.add_argument("--overload-files", type=int, default=d.files, help="files per request")
    ap.add_argument(
        "--overload-seconds",
        type=float,
        default=d.seconds,
        help="seconds of peak and of overload per side; 0 = no overload row",
    )
    ap.add_argument(
        "--overload-factor", type=float, default=d.factor, help="offered load over each side's peak"
    )
    ap.add_argument(
        "--overload-concurrency",
        type=int,
        default=d.concurrency,
        help="clients of the closed loop that finds the peak",
    )
    ap.add_argument("--overload-in-flight", type=int, default=d.in_flight,
                    help="most requests the open loop has outstanding")  # fmt: skip


def options(args: argparse.Namespace) -> Options:
    return Options(
        kind=args.overload_kind, files=args.overload_files, seconds=args.overload_seconds,
        factor=args.overload_factor, concurrency=args.overload_concurrency,
        in_flight=args.overload_in_flight,
    )  # fmt: skip


def main() -> int:
    from bench import run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--server-cores", default="0")
    ap.add_argument("--client-cores", default="1")
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    run.OUT.mkdir(parents=True, exist_ok=True)
    paths = run.export_pngs(args.images).read_text().split()
    setup = run.Setup(server_cores=args.server_cores, client_cores=args.client_cores)
    baseline = run.start_baseline(setup, 18780)
    service = run.start_service(setup, 18781)
    try:
        rows = measure(
            [(service.name, service.url), (baseline.name, baseline.url)], paths, options(args),
            args.client_cores,
        )  # fmt: skip
    finally:
        for proc in (service, baseline):
            proc.stop()
    print(table(rows))
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    goodputs = [r.goodput_of_peak for r in rows if r.side == "service"]
    print(f"service goodput over its peak: {statistics.median(goodputs):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
