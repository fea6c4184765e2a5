"""Take the README's screenshot of the explorer: the demo page in a typical session.

EfficientNet-Lite0 on scikit-image's cat: Grad-CAM, DiffCAM against plain textures and Eigen-CAM
side by side, with their deletion and insertion curves, in Debian's Chromium driven by Playwright.

    python scripts/explorer_screenshot.py --out docs/explorer.jpg
"""

from __future__ import annotations

import argparse
import socket

from playwright.sync_api import expect, sync_playwright

from whycam.app import BROWSER_FLAGS, launch
from whycam.explorer import Explorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/explorer.jpg")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blocks = launch(Explorer.demo(), port=port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=BROWSER_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(300_000)
            expect.set_options(timeout=300_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#examples img").first.click()
            expect(page.locator("#status")).to_contain_text("predicted")
            page.locator("#run").click()
            expect(page.locator("#status")).to_contain_text("Class explained")
            expect(page.locator("#maps img")).to_have_count(3)
            page.locator("#plot").click()
            expect(page.locator("#status")).to_contain_text("curves of")
            page.screenshot(path=args.out, full_page=True, type="jpeg", quality=80)
            browser.close()
    finally:
        blocks.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
