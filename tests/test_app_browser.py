"""The explorer page driven in Debian's Chromium by Playwright, as a user would.

One page, served on a free localhost port with the digits CNN: pick an example, choose three methods,
run and wait for three maps; ask DiffCAM "why not a 5" and see its map change; upload a corrupt file
and see the error while the page keeps working; plot curves and download the maps; no error in the
browser console and no request leaves localhost. Skipped only when Chromium is absent (.ci/run
installs Debian's chromium).
"""

from __future__ import annotations

import io
import shutil
import socket
import zipfile

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from whycam.app import BROWSER_FLAGS, launch  # noqa: E402
from whycam.explorer import Explorer, digits_source  # noqa: E402

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 120_000  # ms: the machine is small and shared


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    port = free_port()
    blocks = launch(Explorer({"digits-cnn": digits_source()}), port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


@pytest.fixture(scope="module")
def browser_page(served):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT)
        page.console_errors, page.outside = [], []
        page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(served) else page.outside.append(r.url))
        page.goto(served)
        yield page
        browser.close()


def map_captions(page: Page) -> list[str]:
    return page.locator("#maps img").evaluate_all("images => images.map(i => i.alt || '')")


def overlay_pixels(page: Page, index: int) -> np.ndarray:
    source = page.locator("#maps img").nth(index).get_attribute("src")
    data = page.request.get(source).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def run_and_wait(page: Page, count: int, status: str = "Class explained") -> None:
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text(status, timeout=TIMEOUT)
    expect(page.locator("#maps img")).to_have_count(count, timeout=TIMEOUT)


def choose_methods(page: Page, names: list[str]) -> None:
    group = page.locator("#methods")
    for box in group.locator("input[type=checkbox]").all():
        if box.is_checked():
            box.uncheck()
    for name in names:
        group.get_by_label(name, exact=True).check()


def test_explorer_session(browser_page: Page, tmp_path):
    page = browser_page
    expect(page.locator("#examples img").first).to_be_visible(timeout=TIMEOUT)
    page.locator("#examples img").nth(13).click()  # "digit 3 #2"
    expect(page.locator("#status")).to_contain_text("predicted", timeout=TIMEOUT)
    expect(page.locator("#target input[type=radio]")).to_have_count(5)

    choose_methods(page, ["gradcam", "diffcam", "layercam"])
    run_and_wait(page, 3)
    captions = " ".join(map_captions(page))
    assert "gradcam" in captions and "diffcam" in captions and "layercam" in captions
    why = overlay_pixels(page, 1)

    page.locator("#question").get_by_label("why is this not the class chosen below", exact=False).check()
    page.locator("#versus input").fill("5")
    page.keyboard.press("Enter")
    expect(page.locator("#reference img").first).to_be_visible(timeout=TIMEOUT)
    run_and_wait(page, 3, "why-not 5")
    why_not = overlay_pixels(page, 1)
    assert why.shape == why_not.shape and np.abs(why - why_not).max() > 30  # DiffCAM's map changed

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    page.locator("#upload input[type=file]").set_input_files(str(corrupt))
    expect(page.locator("#status")).to_contain_text("Error", timeout=TIMEOUT)
    expect(page.locator("#status")).to_contain_text("corrupt.png")
    run_and_wait(page, 3)  # the page keeps working on the last good image

    page.locator("#plot").click()
    expect(page.locator("#curves img, #curves svg, #curves canvas").first).to_be_visible(timeout=TIMEOUT)
    page.locator("#download").click()
    link = page.locator("#files a").first
    expect(link).to_be_visible(timeout=TIMEOUT)
    archive = zipfile.ZipFile(io.BytesIO(page.request.get(link.get_attribute("href")).body()))
    assert sorted(archive.namelist()) == sorted(
        [f"maps/{m}.npy" for m in ("gradcam", "diffcam", "layercam")]
        + [f"overlays/{m}.png" for m in ("gradcam", "diffcam", "layercam")]
    )
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert page.console_errors == []
    assert page.outside == []
