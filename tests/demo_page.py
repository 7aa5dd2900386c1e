"""Driving the browser demo (app/static) with Playwright: shared by its tests and
docs/screenshot.py. Playwright is imported by the callers, so this module imports without it."""

from __future__ import annotations

import math
import shutil
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import CDPSession, Page

Stroke = list[tuple[float, float]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> Stroke:
    # Starts at the top and closes on itself, as a hand draws a 0.
    return [
        (cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n))
        for i in range(n + 1)
    ]


# Digits as pen strokes in canvas-relative coordinates (0..1 across, 0..1 down), each one
# drawn with the mouse button held, the way a person draws them.
DIGITS: dict[str, list[Stroke]] = {
    "0": [_ellipse(0.5, 0.5, 0.2, 0.3)],
    "1": [[(0.52, 0.18), (0.5, 0.5), (0.48, 0.82)]],
    "4": [[(0.36, 0.18), (0.3, 0.58), (0.72, 0.58)], [(0.62, 0.2), (0.62, 0.84)]],
    "7": [[(0.27, 0.22), (0.72, 0.22), (0.56, 0.5), (0.44, 0.82)]],
}


def chromium_path() -> str | None:
    """Debian's chromium (``make browser``), which Playwright drives; None if absent."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def draw(page: Page, strokes: list[Stroke], steps: int = 4) -> None:
    """Draw ``strokes`` on the canvas with the mouse, ``steps`` moves per segment."""
    box = page.get_by_test_id("canvas").bounding_box()
    assert box is not None, "the canvas is not visible"

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=steps)
        page.mouse.up()


def touch_draw(page: Page, cdp: CDPSession, strokes: list[Stroke], steps: int = 4) -> None:
    """Draw ``strokes`` with a finger: raw touch events through the DevTools protocol, which
    the browser turns into pointer events of type "touch" (and, without the canvas's
    ``touch-action: none``, into scrolling). Needs a context with ``has_touch``."""
    box = page.get_by_test_id("canvas").bounding_box()
    assert box is not None, "the canvas is not visible"

    def touch(kind: str, point: tuple[float, float] | None) -> None:
        points = []
        if point is not None:
            points = [
                {"x": box["x"] + point[0] * box["width"], "y": box["y"] + point[1] * box["height"]}
            ]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    for stroke in strokes:
        touch("touchStart", stroke[0])
        for (x0, y0), (x1, y1) in pairwise(stroke):
            for i in range(1, steps + 1):
                t = i / steps
                touch("touchMove", (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
        touch("touchEnd", None)


def wait_for_result(page: Page, timeout_ms: float = 30_000) -> None:
    """Wait until no prediction is scheduled or in flight (the result's aria-busy)."""
    page.wait_for_selector("#result[aria-busy='false']", timeout=timeout_ms)


def screenshot(page: Page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
