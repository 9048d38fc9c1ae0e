"""The web page in headless Chromium (Debian's chromium, driven by Playwright) against the live service."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from ils.config import load_config

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "browser-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    from ray import serve

    from serve.app import start_service

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEY + "\n")
    cfg = load_config(None, ["serve.allow_anonymous=false", f"serve.api_keys_file={keys}", "serve.num_cpus=0.5",
                             "serve.autoscaling.max_replicas=1"])
    handle = start_service(cfg, port=_free_port(), ready_timeout_s=240)
    yield handle
    serve.shutdown()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_upload_instruction_answer_and_overlay(service, tmp_path):
    from playwright.sync_api import sync_playwright

    from ils.phantom.sample import generate_study

    study = generate_study(0, 0, load_config(None, ["sample.size=128", "image.size=64"]))  # synthetic phantom
    png = tmp_path / "phantom.png"
    Image.fromarray((study.image * 255).astype(np.uint8)).save(png)
    instruction = "Segment the effusion in the left lung base."
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(service.url + "/")
            assert page.title().startswith("ILS")
            n_suggestions = page.locator("#suggestions option").count()
            assert n_suggestions > 50
            page.set_input_files("#image", str(png))
            page.fill("#instruction", instruction)
            page.fill("#apikey", KEY)
            with page.expect_response("**/v1/segment") as resp_info:
                page.click("#submit")
            body = resp_info.value.json()
            assert resp_info.value.status == 200, body
            page.wait_for_selector("#canvas[data-drawn='true']", timeout=60_000)
            assert page.inner_text("#message") == body["message"] and "[SEG]" not in body["message"]
            assert page.inner_text("#answer") == body["answer"] and body["answer"].startswith("[SEG]")
            assert page.inner_text("#status") == "Done."
            size = page.evaluate("() => [document.getElementById('canvas').width, document.getElementById('canvas').height]")
            assert size == [128, 128]
            # the overlay: red-tinted pixels exactly where the mask is set (empty mask: none)
            red = page.evaluate("""() => { const c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] - d[i + 1] > 60) n++; return n; }""")
            assert (red > 0) == (body["mask_pixels"] > 0), (red, body["mask_pixels"])
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            # a wrong key shows the service's error on the page
            page.fill("#apikey", "wrong")
            page.click("#submit")
            page.wait_for_selector("#status.error", timeout=30_000)
            assert page.inner_text("#status").startswith("403")
        finally:
            browser.close()
