"""A real browser (Debian's Chromium through Playwright) drives the web UI on a real uvicorn server:
upload a style image, type a prompt, generate, see the image in the gallery, re-use its parameters.
The screenshot is saved to artifacts/ui.png (INSTANTSTYLE_UPDATE_SCREENSHOT=1 also refreshes
docs/ui-screenshot.png)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from server_helpers import live_server

from instantstyle.server.service import GenerationService, Limits

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("INSTANTSTYLE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the 'dev' extra (playwright)")
    pytest.importorskip("gradio", reason="needs the 'serve' extra (gradio)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium; .ci/run does) "
            "or point INSTANTSTYLE_CHROMIUM at one"
        )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


def test_ui_upload_prompt_generate_gallery_reuse(browser, tiny_model, style_images, tmp_path):
    import torch

    from instantstyle.server import create_app

    service = GenerationService(tiny_model, queue_size=4, cpu_threads=1, limits=Limits(max_steps=50))
    with service, live_server(create_app(service, ui=True)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{url}/")  # redirects to the UI
        page.wait_for_selector("#prompt textarea")

        # 1. upload a style image, type a prompt, fix seed and steps
        page.set_input_files("#style-files input[type=file]", str(style_images["red"]))
        page.get_by_text("red.png").first.wait_for()
        page.fill("#prompt textarea", "a red cat")
        page.fill("#seed input", "5")
        page.fill("#steps input[type=number]", "2")
        page.press("#steps input[type=number]", "Tab")

        # 2. generate and see the image in the gallery
        page.click("#generate")
        img = page.wait_for_selector("#gallery img")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)
        page.wait_for_selector("#params >> text=a red cat")
        page.wait_for_selector("#preview img")  # the step preview of the latents
        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)

        # the gallery shows the service's real output: same pixels as the library for that seed
        body = page.request.get(img.get_attribute("src")).body()
        shown = Image.open(io.BytesIO(body))
        meta = json.loads(shown.info["instantstyle"])
        assert (meta["prompt"], meta["seed"], meta["steps"]) == ("a red cat", 5, 2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the worker
        try:
            (ref,) = tiny_model.generate(
                prompt="a red cat",
                seed=5,
                steps=2,
                guidance=5.0,
                width=64,
                height=64,
                style_images=[Image.open(style_images["red"])],
            )
        finally:
            torch.set_num_threads(threads)
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(ref.convert("RGB")))
        assert service.health()["jobs"]["done"] == 1

        # 3. re-use: change the prompt, select the image, "Re-use these parameters" restores it
        page.fill("#prompt textarea", "something else")
        page.click("#gallery img")
        page.click("#reuse")
        page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a red cat'")

        # 4. stylize a content image: img2img from the "Content image" accordion
        # "Re-use" also resets the content image, and its follow-up change events can land after
        # our upload on a loaded machine: (re)open the accordion and upload until the image stays.
        for attempt in range(4):
            if not page.locator("#content-image").is_visible():
                page.click("#content-accordion button")
            page.set_input_files("#content-image input[type=file]", str(style_images["blue"]))
            try:
                page.wait_for_selector("#content-image img", timeout=10_000)
                page.wait_for_timeout(500)
                if page.locator("#content-image img").is_visible():
                    break
            except Exception as exc:  # playwright TimeoutError (playwright is imported lazily)
                if type(exc).__name__ != "TimeoutError":
                    raise
                if attempt == 3:
                    raise
        page.click("#task label:has-text('img2img')")
        page.fill("#strength input", "0.6")
        page.press("#strength input", "Tab")
        page.click("#generate")
        page.wait_for_function("() => document.querySelectorAll('#gallery img').length >= 2")
        page.wait_for_selector("#params >> text=img2img")
        newest = page.query_selector_all("#gallery img")[0]
        meta = json.loads(
            Image.open(io.BytesIO(page.request.get(newest.get_attribute("src")).body())).info["instantstyle"]
        )
        assert (meta["task"], meta["strength"], meta["content"]) == ("img2img", 0.6, "<upload>")
        assert len(meta["content_sha256"]) == 64
        assert service.health()["jobs"]["done"] == 2
        page.close()

    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "ui.png", artifacts / "ui.png")
    print(f"\nUI screenshot: {artifacts / 'ui.png'}")
    if os.environ.get("INSTANTSTYLE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "ui.png", REPO / "docs" / "ui-screenshot.png")
