"""Driving the browser demo (app/static) with Playwright: shared by its tests and
docs/screenshot.py. Playwright is imported by the callers, so this module imports without it."""

from __future__ import annotations

import math
import shutil
from itertools import pairwise
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


def device_draw(
    page: Page, cdp: CDPSession, strokes: list[Stroke], device: str, steps: int = 4
) -> None:
    """Draw ``strokes`` with a finger (``device="touch"``, needs a context with
    ``has_touch``) or a pen (``"pen"``): raw input through the DevTools protocol, which the
    browser turns into pointer events of that type (and a finger's, without the canvas's
    ``touch-action: none``, into scrolling)."""
    box = page.get_by_test_id("canvas").bounding_box()
    assert box is not None, "the canvas is not visible"

    def send(kind: str, point: tuple[float, float]) -> None:
        x, y = box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]
        if device == "touch":
            points = [] if kind == "up" else [{"x": x, "y": y}]
            touch = {"down": "touchStart", "move": "touchMove", "up": "touchEnd"}[kind]
            cdp.send("Input.dispatchTouchEvent", {"type": touch, "touchPoints": points})
        else:
            mouse = {"down": "mousePressed", "move": "mouseMoved", "up": "mouseReleased"}[kind]
            event = {"type": mouse, "x": x, "y": y, "button": "left", "pointerType": device}
            cdp.send("Input.dispatchMouseEvent", {**event, "buttons": int(kind != "up")})

    for stroke in strokes:
        send("down", stroke[0])
        for (x0, y0), (x1, y1) in pairwise(stroke):
            for i in range(1, steps + 1):
                t = i / steps
                send("move", (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
        send("up", stroke[-1])


def wait_for_result(page: Page, timeout_ms: float = 30_000) -> None:
    """Wait until no prediction is scheduled or in flight (the result's aria-busy)."""
    page.wait_for_selector("#result[aria-busy='false']", timeout=timeout_ms)
