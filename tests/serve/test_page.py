"""The page at ``/`` in a real browser: headless Chromium (Debian's, driven by Playwright's Python API) drops a
photo on the page of a real ``serve`` process, and the cut-out it gets back and shows has the car's alpha
(Dice >= 0.95 against the true mask: a synthetic demo photo with the reduced demo's models; a real sample photo
with its mask when ../shared is present, where the same reduced models are not expected to reach 0.95, so that
variant checks the page shows the cut-out of the photo's size). A screenshot lands in the test's tmp dir."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana_seg.core.images import read_mask
from carvana_seg.core.metrics import dice

pytestmark = [pytest.mark.slow, pytest.mark.dag, pytest.mark.server, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements-dev.txt, make env)"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


DROP = """([b64, name]) => {
  const bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
  return dt;
}"""


def drop_and_cut(browser, url: str, photo: Path, shot: Path) -> np.ndarray:
    """Drop ``photo`` on the page; return the alpha of the cut-out the page received and displays."""
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.startsWith('run ')", timeout=30_000)
    data = page.evaluate_handle(DROP, [base64.b64encode(photo.read_bytes()).decode(), photo.name])
    with page.expect_response(lambda r: r.url.endswith("/v1/cutout"), timeout=120_000) as resp:
        page.dispatch_event("#drop", "drop", {"dataTransfer": data})
    assert resp.value.status == 200, resp.value.text()
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
    shown = page.evaluate("""async () => {
        const img = document.getElementById('cutout');
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let bin = '';
        for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        return [img.naturalWidth, img.naturalHeight, img.src.startsWith('blob:'), btoa(bin)]; }""")
    assert page.evaluate("document.getElementById('download').href").startswith("blob:")
    page.screenshot(path=str(shot), full_page=True)
    assert errors == []
    rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown.pop()))))  # the PNG the page shows
    assert rgba.ndim == 3 and rgba.shape[2] == 4
    assert shown == [rgba.shape[1], rgba.shape[0], True]
    page.close()
    return rgba[..., 3] > 127


def test_page_cuts_a_dropped_synthetic_photo(browser, demo_run, start_server, tmp_path):
    raw = demo_run.parents[1] / "data" / "serve" / "raw"
    photo = min((raw / "train").glob("*.jpg"))  # a training photo has its true mask
    url = start_server("--models", str(demo_run), "--device", "cpu", "--backend", "torch")
    alpha = drop_and_cut(browser, url, photo, tmp_path / "page.png")
    truth = read_mask(raw / "train_masks" / photo.name.replace(".jpg", "_mask.gif")).astype(bool)
    assert alpha.shape == truth.shape
    assert dice(alpha, truth) >= 0.95


def test_the_page_says_the_models_saw_only_synthetic_cars_and_docs_load_offline(browser, demo_run, start_server):
    """The demo run's page shows the synthetic-data notice and its provenance in the header; ``/docs`` (Swagger UI
    from the package, fastapi-offline) renders the API with every request outside the server blocked and none made."""
    url = start_server("--models", str(demo_run), "--device", "cpu", "--backend", "torch")
    page = browser.new_page()
    outside: list[str] = []

    def only_loopback(route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.startsWith('run ')", timeout=30_000)
    assert page.is_visible("#notice") and "only on synthetic cars" in page.inner_text("#notice")
    header = page.inner_text("#model")
    assert "trained on synthetic data: 3 cars" in header, header
    page.goto(url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    assert {"/v1/cutout", "/v1.0/removebg", "/api/remove"} <= {p.replace("\u200b", "") for p in paths}, paths
    assert outside == [], outside
    page.close()


@pytest.mark.real
def test_page_cuts_a_dropped_real_photo(browser, demo_run, start_server, real_sample, tmp_path):
    photo = min((real_sample / "train").glob("*.jpg"))
    url = start_server("--models", str(demo_run), "--device", "cpu", "--backend", "torch")
    alpha = drop_and_cut(browser, url, photo, tmp_path / "page_real.png")
    truth = read_mask(real_sample / "train_masks" / photo.name.replace(".jpg", "_mask.gif")).astype(bool)
    assert alpha.shape == truth.shape == (1280, 1918)
