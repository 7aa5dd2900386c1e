"""A realistic upload set, and its evaluation through the HTTP service.

``python bench/realworld.py generate`` writes images that look like what users send,
built only from the TEST splits (never the training images) and from handwriting fonts:

* ``mnist-inverted``: MNIST test digits, black on white, upscaled to 64..512 px (PNG);
* ``mnist-photo``: MNIST test digits as dark ink on grey paper, off-centre, under a lighting
  gradient and vignette, blurred, noisy, tinted, saved as JPEG (a phone photo);
* ``font-digits``: digits typeset in handwriting fonts from Debian packages, rotated up to
  12 degrees, on off-white paper, some blurred and saved as JPEG;
* ``fashion-inverted``: Fashion-MNIST test items, inverted and upscaled (PNG);
* ``mnist-test`` / ``fashion-test``: the original 28x28 test images as PNG (must not change).

Everything goes under ``--out`` (default ``data/realworld``, ignored by git) with a
``labels.csv``; the same ``--seed`` gives the same files.

``python bench/realworld.py evaluate`` starts the service (``python -m app``) on a free
loopback port (or uses ``--url``), posts every image with ``preprocess=none`` and with
``preprocess=auto`` (and ``dataset`` with ``--modes``), and prints accuracy per kind of
upload and per model.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.testing import REPO, running_server
from training.datasets import load_split

DEFAULT_OUT = REPO / "data" / "realworld"

# Handwriting-like fonts and the Debian package of each (``apt-get install`` them all with
# the command in docs/real-world.md). Outline or decorative faces are left out.
FONT_PACKAGES: dict[str, tuple[str, ...]] = {
    "fonts-dkg-handwriting": ("dkg.ttf", "dkgBd.ttf", "dkgIt.ttf", "dkgBI.ttf"),
    "fonts-bwht": tuple(
        f"BecauseWe{n}-Regular.otf"
        for n in ("Build", "Connect", "Create", "Learn", "Mentor", "Organize")
    ),
    "fonts-comic-neue": (
        "ComicNeue-Regular.otf", "ComicNeue-Bold.otf", "ComicNeue-Light.otf",
        "ComicNeue-Italic.otf", "ComicNeue-BoldItalic.otf", "ComicNeue-LightItalic.otf",
    ),
    "fonts-dancingscript": ("DancingScript-Regular.otf", "DancingScript-Bold.otf"),
    "fonts-humor-sans": ("Humor-Sans.ttf",),
    "fonts-breip": ("Breip.ttf",),
    "fonts-kristi": ("Kristi.ttf",),
}  # fmt: skip
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")

KINDS: dict[str, str] = {
    "mnist-inverted": "mnist",
    "mnist-photo": "mnist",
    "font-digits": "mnist",
    "fashion-inverted": "fashion-mnist",
    "mnist-test": "mnist",
    "fashion-test": "fashion-mnist",
}


def find_fonts() -> list[Path]:
    """The handwriting fonts of :data:`FONT_PACKAGES` installed on this machine."""
    wanted = {name for names in FONT_PACKAGES.values() for name in names}
    found: dict[str, Path] = {}
    for root in FONT_DIRS:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.name in wanted and path.name not in found:
                    found[path.name] = path
    return [found[n] for n in sorted(found)]


# ---------------------------------------------------------------------------- generation


def _upscale(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(64, 513))
    resample = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS]
    return Image.fromarray(digit).resize((side, side), resample[int(rng.integers(3))])


def inverted(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Black on white, upscaled: a drawing exported from a canvas."""
    return _upscale(255 - image, rng)


def phone_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Dark ink on grey paper, off-centre, uneven light, blur, noise, colour cast."""
    h, w = int(rng.integers(240, 481)), int(rng.integers(240, 641))
    size = int(min(h, w) * rng.uniform(0.3, 0.6))  # the 28x28 field; the digit is ~70% of it
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))
    ink = ink.astype(np.float32) / 255.0
    y0 = int(rng.integers(0, h - size + 1))
    x0 = int(rng.integers(0, w - size + 1))
    mask = np.zeros((h, w), np.float32)
    mask[y0 : y0 + size, x0 : x0 + size] = ink
    paper = rng.uniform(150, 225)
    darkness = rng.uniform(0.55, 0.9)  # pencil .. marker
    img = paper * (1 - darkness * mask)
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy / h - 0.5, xx / w - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0.15, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy) * 2
    vignette = 1 - rng.uniform(0.0, 0.35) * (xx**2 + yy**2) * 2
    img = img * gradient * vignette
    img = np.asarray(
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0))
        ),
        np.float32,
    )
    tint = rng.uniform(0.9, 1.1, size=3)
    rgb = img[..., None] * tint + rng.normal(0, rng.uniform(2, 8), size=(h, w, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def font_digit(digit: int, font: Path, rng: np.random.Generator) -> Image.Image:
    """A digit typeset in a handwriting font, small rotation, on off-white paper."""
    px = int(rng.integers(40, 161))
    face = ImageFont.truetype(str(font), px)
    canvas = Image.new("L", (px * 3, px * 3), 0)
    ImageDraw.Draw(canvas).text((px, px // 2), str(digit), font=face, fill=255)
    canvas = canvas.rotate(rng.uniform(-12, 12), Image.Resampling.BICUBIC)
    box = canvas.getbbox() or (0, 0, canvas.width, canvas.height)
    glyph = np.asarray(canvas.crop(box), np.float32) / 255.0
    gh, gw = glyph.shape
    pad = int(max(gh, gw) * rng.uniform(0.2, 1.0))
    h, w = gh + 2 * pad, gw + 2 * pad
    y0, x0 = int(rng.integers(0, h - gh + 1)), int(rng.integers(0, w - gw + 1))
    mask = np.zeros((h, w), np.float32)
    mask[y0 : y0 + gh, x0 : x0 + gw] = glyph
    paper = rng.uniform(215, 255)
    img = paper * (1 - rng.uniform(0.7, 1.0) * mask) + rng.normal(0, rng.uniform(0, 4), (h, w))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return out


@dataclass
class Sample:
    file: str
    kind: str
    dataset: str
    label: int
    source: str  # test-split index, or font file and digit


def _save(image: Image.Image, path: Path, rng: np.random.Generator, jpeg: bool) -> None:
    if jpeg:
        image.save(path, "JPEG", quality=int(rng.integers(35, 86)))
    else:
        image.save(path, "PNG")


def generate(
    out: Path, seed: int = 0, per_kind: int = 500, data_dir: Path | None = None
) -> list[Sample]:
    """Write every kind of :data:`KINDS` (``per_kind`` images each) and ``labels.csv``."""
    rng = np.random.default_rng(seed)
    mnist = load_split("mnist", False, data_dir)
    fashion = load_split("fashion-mnist", False, data_dir)
    fonts = find_fonts()
    samples: list[Sample] = []
    for kind, dataset in KINDS.items():
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        split = mnist if dataset == "mnist" else fashion
        picks = rng.choice(len(split), size=min(per_kind, len(split)), replace=False)
        for n, index in enumerate(picks.tolist()):
            image_arr = split.images[index, 0].numpy()
            label = int(split.labels[index])
            source = f"test[{index}]"
            jpeg = False
            if kind in ("mnist-inverted", "fashion-inverted"):
                image = inverted(image_arr, rng)
            elif kind == "mnist-photo":
                image, jpeg = phone_photo(image_arr, rng), True
            elif kind == "font-digits":
                if not fonts:
                    break
                label = n % 10
                font = fonts[(n // 10) % len(fonts)]
                image, source = font_digit(label, font, rng), f"{font.name}:{label}"
                jpeg = rng.random() < 0.5
            else:
                image = Image.fromarray(image_arr)
            name = f"{kind}/{n:05d}.{'jpg' if jpeg else 'png'}"
            _save(image, out / name, rng, jpeg)
            samples.append(Sample(name, kind, dataset, label, source))
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "kind", "dataset", "label", "source"])
        for s in samples:
            writer.writerow([s.file, s.kind, s.dataset, s.label, s.source])
    return samples


def read_labels(folder: Path) -> list[Sample]:
    with (folder / "labels.csv").open() as f:
        return [
            Sample(r["file"], r["kind"], r["dataset"], int(r["label"]), r["source"])
            for r in csv.DictReader(f)
        ]


# ---------------------------------------------------------------------------- evaluation


@contextmanager
def serve(models_dir: Path | None = None) -> Iterator[str]:
    """``python -m app`` on a free loopback port; yields its URL once ready."""
    env = {"MNIST_SERVE_ACCESS_LOG": "false"}
    if models_dir is not None:
        env["MNIST_SERVE_MODELS_DIR"] = str(models_dir)
    with running_server(env, output=subprocess.DEVNULL) as server:
        yield server.url


def predict_files(
    client: httpx.Client, model: str, files: list[bytes], mode: str, batch: int = 32
) -> list[int]:
    """Class index the service gives each file (``batch`` files per request)."""
    out: list[int] = []
    for start in range(0, len(files), batch):
        parts = [("file", (f"{i}", data)) for i, data in enumerate(files[start : start + batch])]
        r = client.post("/predict", params={"model": model, "preprocess": mode}, files=parts)
        r.raise_for_status()
        out.extend(p["class_index"] for p in r.json()["predictions"])
    return out


@dataclass
class Row:
    kind: str
    model: str
    count: int
    accuracy: dict[str, float]  # mode -> accuracy


def evaluate_folder(
    folder: Path,
    client: httpx.Client,
    modes: tuple[str, ...] = ("none", "auto"),
    kinds: list[str] | None = None,
) -> list[Row]:
    """Accuracy of every loaded model of the right dataset on every kind, per mode.

    ``client`` talks to the service: an ``httpx.Client`` with its base URL, or a FastAPI
    ``TestClient``.
    """
    models = client.get("/models").json()["models"]
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in read_labels(folder):
        if kinds is None or s.kind in kinds:
            by_kind[s.kind].append(s)
    rows = []
    for kind, samples in by_kind.items():
        files = [(folder / s.file).read_bytes() for s in samples]
        labels = np.array([s.label for s in samples])
        for m in models:
            if m["dataset"] != samples[0].dataset:
                continue
            acc = {}
            for mode in modes:
                pred = np.array(predict_files(client, m["name"], files, mode))
                acc[mode] = float((pred == labels).mean())
            rows.append(Row(kind, m["name"], len(samples), acc))
    return rows


def format_table(rows: list[Row], modes: tuple[str, ...]) -> str:
    head = "| kind | model | images | " + " | ".join(f"`{m}`" for m in modes) + " |"
    lines = [head, "| " + " | ".join(["---"] * (3 + len(modes))) + " |"]
    for r in rows:
        cells = " | ".join(f"{100 * r.accuracy[m]:.2f}%" for m in modes)
        lines.append(f"| {r.kind} | {r.model} | {r.count} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/realworld.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the realistic upload set")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--per-kind", type=int, default=500)
    g.add_argument("--data-dir", type=Path, default=None)
    e = sub.add_parser("evaluate", help="accuracy per kind of upload, through the service")
    e.add_argument("--data", type=Path, default=DEFAULT_OUT)
    e.add_argument("--url", help="a running service (default: start one on a free port)")
    e.add_argument("--models-dir", type=Path, help="for the service started here")
    e.add_argument("--modes", default="none,auto", help="comma-separated: none,auto,dataset")
    e.add_argument("--kinds", help="comma-separated subset of the kinds")
    args = parser.parse_args(argv)
    if args.command == "generate":
        fonts = find_fonts()
        if not fonts:
            print("no handwriting fonts found: font-digits skipped (see docs/real-world.md)",
                  file=sys.stderr)  # fmt: skip
        samples = generate(args.out, args.seed, args.per_kind, args.data_dir)
        counts: dict[str, int] = defaultdict(int)
        for s in samples:
            counts[s.kind] += 1
        print(f"wrote {len(samples)} images to {args.out} ({len(fonts)} fonts): {dict(counts)}")
        return 0
    modes = tuple(args.modes.split(","))
    kinds = args.kinds.split(",") if args.kinds else None
    if args.url:
        with httpx.Client(base_url=args.url, timeout=120) as client:
            rows = evaluate_folder(args.data, client, modes, kinds)
    else:
        with serve(args.models_dir) as url, httpx.Client(base_url=url, timeout=120) as client:
            rows = evaluate_folder(args.data, client, modes, kinds)
    print(format_table(rows, modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
