"""Serving benchmark: the service against a plain baseline, both sides in one run.

    python bench/run.py                 # the table and the overload row (about 5 minutes)
    python bench/run.py --soak 100000   # + resident memory over 100,000 requests
    python bench/run.py --device cuda --workers 8 --server-cores 0-7 --client-cores 8-15 \
        --wrk-threads 4 --rounds 3                                  # the GPU comparison

Starts the service (``python -m app``, one worker, one torch thread) and the plain baseline
(``bench/baseline.py``: sync endpoint, one image per forward pass, the same model loader and
preprocessing) pinned to one core with ``taskset``, and drives each in turn with ``wrk``
pinned to another core, POSTing real MNIST test PNGs as multipart uploads
(``bench/predict.lua``). The two sides are measured alternately at each concurrency so that
drift in the machine's load hits both alike, and each round ends with both sides' 64-file
rows, then the service's V2 row: the same 64 images per request as one binary ``image``
tensor of the Open Inference Protocol (``bench/v2.lua``, bodies built here once), through
the same batches. The service's 64-file images/s is compared, round by round, with the
baseline's best single-image req/s *of the same round* (the CPU target) and with the
baseline's own 64-file images/s (the GPU target); the median over rounds is reported,
beside the ratio of the medians; the V2 row is compared with the service's 64-file row of
the same round (the goal: at least 0.9x). Prints one table (req/s, images/s, p50, p99,
errors, server CPU per request, ratio to the baseline row of the same concurrency and
files), then the 64-file ratios, cold start and resident memory, and writes everything as
JSON under bench/out/.

Last, the overload row (bench/overload.py): each side offered about 3x its own peak with
an open loop of uploads whose answers are checked; goodput, the share shed and the accepted
requests' p99 (``--overload-seconds 0`` leaves it out).

On a GPU (``--device cuda``) both sides run their forward passes there, each with
``--workers`` server processes; the report adds the share of the service's wall time spent
in forward passes (from its ``mnist_serve_inference_duration_seconds`` metric).

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``) and ``taskset`` (util-linux).
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.testing import REPO, free_port, spawn, wait_ready
from bench import overload

OUT = REPO / "bench" / "out"
LUA = REPO / "bench" / "predict.lua"
V2_LUA = REPO / "bench" / "v2.lua"
MODEL = "mnist-lenet5"


# --- processes -------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    url: str
    ready_path: str
    cold_start_s: float = 0.0
    log: Path = field(default_factory=Path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its descendants (worker processes, if any)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(k) for k in kids)
        return out

    def rss_mib(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the process and its descendants."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(name: str, cmd: list[str], env: dict[str, str], port: int, ready_path: str) -> Proc:
    log = OUT / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        server = spawn(env, port=port, command=cmd, output=out)
    proc = Proc(name, server.process, server.url, ready_path, log=log)
    try:
        wait_ready(server, timeout=180, path=ready_path)
    except (RuntimeError, TimeoutError) as exc:
        proc.stop()
        sys.exit(f"{name}: {exc}; see {log}")
    proc.cold_start_s = time.perf_counter() - started
    return proc


@dataclass
class Setup:
    """Where and how both sides run: the same device, worker count and cores."""

    device: str = "cpu"
    workers: int = 1
    server_cores: str = "0"  # taskset list
    client_cores: str = "1"
    wrk_threads: int = 1


def start_service(setup: Setup, port: int) -> Proc:
    env = {
        "MNIST_SERVE_HOST": "127.0.0.1",
        "MNIST_SERVE_PORT": str(port),
        "MNIST_SERVE_DEVICE": setup.device,
        "MNIST_SERVE_MODELS": MODEL,
        "MNIST_SERVE_DEFAULT_MODEL": MODEL,
        "MNIST_SERVE_WORKERS": str(setup.workers),
        "MNIST_SERVE_TORCH_THREADS": "1",
        "MNIST_SERVE_ACCESS_LOG": "false",
        "MNIST_SERVE_LOG_LEVEL": "warning",
    }
    cmd = ["taskset", "-c", setup.server_cores, sys.executable, "-m", "app"]
    return start("service", cmd, env, port, "/health/ready")


def start_baseline(setup: Setup, port: int) -> Proc:
    env = {
        "BENCH_MODEL_DIR": str(REPO / "models" / MODEL),
        "BENCH_TORCH_THREADS": "1",
        "BENCH_DEVICE": setup.device,
    }
    cmd = [
        "taskset", "-c", setup.server_cores, sys.executable, "-m", "uvicorn", "bench.baseline:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
        "--workers", str(setup.workers),
    ]  # fmt: skip
    return start("baseline", cmd, env, port, "/health")


def forward_seconds(service: Proc) -> float:
    """The service's total forward-pass time so far (all workers), from /metrics."""
    with urllib.request.urlopen(service.url + "/metrics", timeout=10) as r:
        families = text_string_to_metric_families(r.read().decode())
    return sum(
        sample.value
        for family in families
        if family.name == "mnist_serve_inference_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_sum")
    )


# --- load ------------------------------------------------------------------------------


def export_pngs(count: int) -> Path:
    """The first ``count`` MNIST test images as PNG files, listed in bench/out/png.list."""
    listing = OUT / "png.list"
    folder = OUT / "png"
    if listing.is_file() and len(listing.read_text().split()) == count:
        return listing
    from PIL import Image

    from training.datasets import load_split

    split = load_split("mnist", train=False)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}_{int(split.labels[i])}.png"
        Image.fromarray(split.images[i, 0].numpy()).save(path)
        paths.append(str(path))
    listing.write_text("\n".join(paths) + "\n")
    return listing


@dataclass
class Run:
    side: str
    concurrency: int
    files: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float  # server CPU time per request: robust to a busy machine
    server_cpu_share: float  # of one core, during the run


def v2_bodies(listing: Path, files: int) -> Path:
    """V2 inference bodies of ``files`` PNGs each, in the order bench/predict.lua takes them:
    one binary BYTES ``image`` tensor, every output binary (tritonclient's default). Each
    body is a file; bench/v2.lua reads the list (path, JSON length) in bench/out/v2.list."""
    folder = OUT / "v2"
    folder.mkdir(parents=True, exist_ok=True)
    images = [Path(p).read_bytes() for p in listing.read_text().split()]
    lines = []
    for r in range(max(1, len(images) // files)):
        batch = [images[(r * files + i) % len(images)] for i in range(files)]
        blob = b"".join(len(b).to_bytes(4, "little") + b for b in batch)
        header = json.dumps({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [files],
                        "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True},
        }).encode()  # fmt: skip
        path = folder / f"{r:04d}.bin"
        path.write_bytes(header + blob)
        lines.append(f"{path} {len(header)}")
    out = OUT / "v2.list"
    out.write_text("\n".join(lines) + "\n")
    return out


def wrk(
    proc: Proc,
    listing: Path,
    concurrency: int,
    files: int,
    seconds: float,
    setup: Setup,
    v2: bool = False,
) -> Run:
    """One wrk measurement: ``/predict`` with ``files`` PNGs per request, or with ``v2`` the
    V2 bodies listed in ``listing`` (``files`` images each)."""
    secs = max(1, round(seconds))
    threads = max(1, min(setup.wrk_threads, concurrency))
    script, path = (V2_LUA, f"/v2/models/{MODEL}/infer") if v2 else (LUA, "/predict")
    cmd = [
        "taskset", "-c", setup.client_cores, "wrk", f"-t{threads}", f"-c{concurrency}",
        f"-d{secs}s", "--timeout", "30s", "-s", str(script), proc.url + path,
        "--", str(listing), str(files),
    ]  # fmt: skip
    cpu0 = proc.cpu_s()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = proc.cpu_s() - cpu0
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    d = json.loads(line.split(" ", 1)[1])
    secs = d["duration_us"] / 1e6
    n = d["requests"]
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return Run(
        side="v2" if v2 else proc.name, concurrency=concurrency, files=files,
        duration_s=round(secs, 2), requests=n, errors=errors, rps=n / secs,
        images_per_s=n * files / secs,
        p50_ms=d["p50_us"] / 1000, p99_ms=d["p99_us"] / 1000,
        cpu_ms_per_request=cpu / max(n, 1) * 1000, server_cpu_share=cpu / secs,
    )  # fmt: skip


def median_run(runs: list[Run]) -> Run:
    """The run with the median req/s (its own latencies kept together)."""
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def check_agreement(service: Proc, baseline: Proc, listing: Path) -> int:
    """Both sides give the same labels for the first 20 images; returns how many matched."""
    import uuid

    paths = listing.read_text().split()[:20]
    same = 0
    for path in paths:
        data = Path(path).read_bytes()
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        labels = []
        for proc in (service, baseline):
            req = urllib.request.Request(
                proc.url + "/predict", data=body, method="POST",
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )  # fmt: skip
            with urllib.request.urlopen(req, timeout=30) as r:
                labels.append(json.loads(r.read())["predictions"][0]["label"])
        same += labels[0] == labels[1]
    return same


# --- report ----------------------------------------------------------------------------


def table(runs: list[Run]) -> str:
    """The rows; each service row's ratio is to the baseline's row with the same
    concurrency and files per request (req/s, which for equal files is images/s)."""
    head = (
        f"{'side':<9} {'conc':>4} {'files':>5} {'req/s':>8} {'images/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'CPU ms/req':>10} {'x baseline':>10}"
    )
    base = {(r.concurrency, r.files): r for r in runs if r.side == "baseline"}
    lines = [head, "-" * len(head)]
    for r in runs:
        other = base.get((r.concurrency, r.files)) if r.side != "baseline" else None
        ratio = f"{r.rps / other.rps:.2f}x" if other is not None else ""
        lines.append(
            f"{r.side:<9} {r.concurrency:>4} {r.files:>5} {r.rps:>8.0f} {r.images_per_s:>9.0f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6} {r.cpu_ms_per_request:>10.3f} "
            f"{ratio:>10}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per side")
    ap.add_argument("--concurrency", default="1,16,64", help="comma list")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the sides N times; median")
    ap.add_argument("--files", type=int, default=64, help="files per request for the batch row")
    ap.add_argument("--files-concurrency", type=int, default=16)
    ap.add_argument("--soak", type=int, default=0, help="then N more requests to the service")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for both sides")
    ap.add_argument("--workers", type=int, default=1, help="server processes, both sides")
    ap.add_argument("--server-cores", default="0", help="taskset list for both servers")
    ap.add_argument("--client-cores", default="1", help="taskset list for wrk")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=1000, help="distinct test PNGs to rotate")
    overload.add_arguments(ap)
    args = ap.parse_args()

    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(
                f"{tool} not found: apt-get install {'wrk' if tool == 'wrk' else 'util-linux'}"
            )
    OUT.mkdir(parents=True, exist_ok=True)
    listing = export_pngs(args.images)
    v2_listing = v2_bodies(listing, args.files)
    levels = [int(c) for c in args.concurrency.split(",")]
    setup = Setup(args.device, args.workers, args.server_cores, args.client_cores, args.wrk_threads)

    # Free ports: a fixed one could be another run's server, which would answer for ours.
    baseline = start_baseline(setup, free_port())
    service = start_service(setup, free_port())
    report: dict[str, object] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": asdict(setup),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        agree = check_agreement(service, baseline, listing)
        print(f"agreement: {agree}/20 labels identical between service and baseline")
        for proc in (baseline, service):
            wrk(proc, listing, 16, 1, args.warmup, setup)
        rss_warm = {p.name: p.rss_mib() for p in (baseline, service)}

        # Round-major: each round measures both sides at every concurrency (alternately),
        # then both with multi-file uploads, so a round's multi-file figure is divided by
        # the baseline's rates measured minutes, not a whole run, earlier.
        rounds: list[list[Run]] = []  # every measurement, in the order taken
        base, svc, v2 = -3, -2, -1  # a round's last rows: the many-file runs
        forward_s = 0.0
        sides = (baseline, service)
        many = (args.files_concurrency, args.files, args.duration, setup)
        for _ in range(args.rounds):
            rs = [wrk(p, listing, c, 1, args.duration, setup) for c in levels for p in sides]
            rs.append(wrk(baseline, listing, *many))
            forward0 = forward_seconds(service)
            rs.append(wrk(service, listing, *many))
            forward_s += forward_seconds(service) - forward0
            rs.append(wrk(service, v2_listing, *many, v2=True))
            rounds.append(rs)
        # Per round: the service's multi-file images/s over that round's best baseline
        # single-image req/s (the CPU target) and over the baseline's multi-file images/s.
        paired = [
            rs[svc].images_per_s / max(r.rps for r in rs if r.side == "baseline" and r.files == 1)
            for rs in rounds
        ]
        files_paired = [rs[svc].images_per_s / rs[base].images_per_s for rs in rounds]
        v2_paired = [rs[v2].images_per_s / rs[svc].images_per_s for rs in rounds]
        runs = [median_run([rs[i] for rs in rounds]) for i in range(len(rounds[0]))]
        batches = [rs[svc] for rs in rounds]
        # The metric sums over the worker processes' batch workers (one per process here).
        forward_share = forward_s / sum(b.duration_s for b in batches) / setup.workers
        batch = runs[svc]
        paired_ratio = statistics.median(paired)
        files_ratio = statistics.median(files_paired)
        v2_ratio = statistics.median(v2_paired)
        rss_after = {p.name: p.rss_mib() for p in (baseline, service)}

        print()
        print(table(runs))
        best_base = max(r.rps for r in runs if r.side == "baseline" and r.files == 1)
        print(
            f"\n{args.files} files/request at c={args.files_concurrency}: "
            f"{batch.images_per_s:.0f} images/s (median of {len(batches)}); each round's "
            f"images/s over the baseline's best single-image req/s in the same round: "
            f"{', '.join(f'{x:.1f}x' for x in paired)} -> median {paired_ratio:.1f}x "
            f"(over the best median row above, {best_base:.0f} req/s: "
            f"{batch.images_per_s / best_base:.1f}x); over the baseline's own {args.files}-file "
            f"images/s: {', '.join(f'{x:.1f}x' for x in files_paired)} -> median "
            f"{files_ratio:.1f}x; forward passes: {forward_share:.0%} of its batch workers' wall "
            f"time (mean over {setup.workers} worker process(es))"
        )
        print(
            f"V2, {args.files} images per request as one binary 'image' tensor: "
            f"{runs[v2].images_per_s:.0f} images/s; over the service's {args.files}-file "
            f"/predict in the same round: {', '.join(f'{x:.2f}x' for x in v2_paired)} -> "
            f"median {v2_ratio:.2f}x (goal: >= 0.9x)"
        )
        print("\ncold start (process start -> ready):", end="")
        for p in (baseline, service):
            print(f"  {p.name} {p.cold_start_s:.2f} s", end="")
        print("\nRSS MiB after warm-up -> after the run:", end="")
        for p in (baseline, service):
            print(f"  {p.name} {rss_warm[p.name]:.1f} -> {rss_after[p.name]:.1f}", end="")
        print()
        report |= {
            "runs": [asdict(r) for r in runs],
            "rounds": [[asdict(r) for r in rs] for rs in rounds],
            "batch_vs_best_baseline": batch.images_per_s / best_base,
            "batch_vs_best_baseline_per_round": paired,
            "batch_vs_best_baseline_paired": paired_ratio,
            "batch_vs_baseline_batch_per_round": files_paired,
            "batch_vs_baseline_batch_paired": files_ratio,
            "v2_vs_predict_batch_per_round": v2_paired,
            "v2_vs_predict_batch_paired": v2_ratio,
            "batch_forward_share_of_wall": forward_share,
            "cold_start_s": {p.name: p.cold_start_s for p in (baseline, service)},
            "rss_mib_after_warmup": rss_warm,
            "rss_mib_after_run": rss_after,
            "label_agreement_of_20": agree,
        }

        if args.overload_seconds:
            rows = overload.measure(
                [(service.name, service.url), (baseline.name, baseline.url)],
                listing.read_text().split(), overload.options(args), setup.client_cores,
            )  # fmt: skip
            print(f"\noverload: each side offered {args.overload_factor:g}x its own peak")
            print(overload.table(rows))
            report["overload"] = overload.as_json(rows)

        if args.soak:
            soak: list[dict[str, float]] = []
            rss0 = service.rss_mib()
            done = 0
            print(f"\nsoak: {args.soak:,} requests to the service at c=64 (RSS {rss0:.1f} MiB)")
            while done < args.soak:
                r = wrk(service, listing, 64, 1, args.duration, setup)
                done += r.requests
                soak.append({"requests": done, "rss_mib": service.rss_mib(), "errors": r.errors})
                print(f"  {done:>8,} requests  RSS {soak[-1]['rss_mib']:.1f} MiB")
            growth = (soak[-1]["rss_mib"] - rss0) / rss0 * 100
            print(f"RSS after {done:,} requests: {soak[-1]['rss_mib']:.1f} MiB, {growth:+.1f}%")
            report |= {"soak": soak, "soak_rss_start_mib": rss0, "soak_growth_pct": growth}
    finally:
        for p in (service, baseline):
            p.stop()
    report["loadavg_at_end"] = os.getloadavg()
    path = OUT / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
