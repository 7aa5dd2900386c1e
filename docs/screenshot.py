"""Redraw docs/demo.png: the browser demo after a digit is drawn on its canvas.

    python docs/screenshot.py [--digit 4] [--width 1000] [--out docs/demo.png]

Starts the service on the shipped models (loopback, a free port), drives Debian's chromium
with Playwright (``make browser`` installs it), draws the digit with the mouse as the tests
do, waits for the prediction and saves the whole page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the tests' helpers are imported from here

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.helpers import running_server  # noqa: E402
from tests.system.demo_page import DIGITS, chromium_path, draw, wait_for_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digit", choices=sorted(DIGITS), default="4")
    parser.add_argument("--width", type=int, default=1000, help="viewport width, CSS px")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "demo.png")
    args = parser.parse_args()
    browser_path = chromium_path()
    if browser_path is None:
        sys.exit("chromium is not installed: make browser")
    with running_server() as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path)
        page = browser.new_page(viewport={"width": args.width, "height": 700})
        page.goto(server.url + "/")
        page.wait_for_selector("[data-testid=model]:not([disabled])")
        draw(page, DIGITS[args.digit])
        wait_for_result(page)
        page.mouse.move(0, 0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
